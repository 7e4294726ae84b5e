"""The `download` stage: fetch a checkpoint (local, hub, ModelScope, git+LFS) with a manifest."""
