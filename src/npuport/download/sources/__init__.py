"""Remote checkpoint sources of the download stage: Hugging Face hub, ModelScope, git + LFS."""
