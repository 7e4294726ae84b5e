"""The message catalogs of the report (templates/messages.<language>.yaml), one ``Messages`` per language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npuport.core.errors import NpuportError
from npuport.core.settings import read_yaml
from npuport.report.mdtext import Md, text

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
LANGUAGES = ("en", "zh")


class Messages:
    """The message catalog of one language: ``t(key, **params)`` gives trusted Markdown, params escaped."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise NpuportError("report.language", f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        self.language = language
        self.catalog = load_catalog(language)

    def __call__(self, key: str, **params: Any) -> Md:
        try:
            message = self.catalog[key]
        except KeyError:
            raise NpuportError(f"messages.{self.language}.yaml", f"no message {key!r}") from None
        return Md(message.format(**{name: text(value) for name, value in params.items()}))

    def has(self, key: str) -> bool:
        return key in self.catalog


def load_catalog(language: str) -> dict[str, str]:
    return read_yaml(TEMPLATE_DIR / f"messages.{language}.yaml")
