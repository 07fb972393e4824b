"""Prompts: a prompts/*.j2 template rendered through the tokenizer's chat template, within a token
budget, with every data string made inert (a title can neither start a prompt line nor a control
token)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrf.core.errors import UserError
from rlrf.core.resources import prompts_dir

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_SPECIAL_LIKE = re.compile(r"<\|[^|<>]{0,40}\|>")
_ZWSP = "\u200b"
_DOMAIN_NAME = re.compile(r"^[\w-]+$")


def neutralise(text: str, special_tokens: Sequence[str] = (), max_chars: int = 300) -> str:
    """Make a data string safe to place in a prompt.

    Control characters and newlines become spaces (a title cannot start a new prompt line), and
    every special-token string (``<|im_start|>``, any ``<|...|>``, the tokenizer's added tokens)
    gets a zero-width space after its first character, so the tokenizer reads plain text instead
    of a control token. Template syntax needs no escaping: values are never re-parsed by Jinja.
    """
    text = _CONTROL.sub(" ", str(text))
    for tok in sorted(special_tokens, key=len, reverse=True):
        if tok and tok in text:
            text = text.replace(tok, tok[0] + _ZWSP + tok[1:])
    text = _SPECIAL_LIKE.sub(lambda m: m.group(0)[0] + _ZWSP + m.group(0)[1:], text)
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def _format_rating(r: float | None) -> str | None:
    if r is None:
        return None
    return str(int(r)) if float(r).is_integer() else f"{r:g}"


@dataclass
class Prompt:
    key: str  # user id or item id
    text: str  # exactly what is tokenised (chat template applied)
    ids: list[int]
    meta: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def template_folders(domain: str) -> list[Path]:
    """Where a bundled template name is looked up: the domain's own set (``prompts/<domain>/``, e.g.
    ``prompts/movies/``) first, then the domain-neutral defaults in ``prompts/``."""
    root = prompts_dir()
    own = root / domain.strip().lower() if _DOMAIN_NAME.match(domain.strip()) else None
    return [own, root] if own is not None and own.is_dir() else [root]


def find_template(template: str, domain: str, key: str = "generate.templates") -> Path:
    """The template file `template` names: a path to a .j2 file (absolute, ``~``, or with a folder),
    else a bundled name (``user_preference``) in `template_folders(domain)`; UserError naming `key`
    when there is no such file."""
    path = Path(template).expanduser()
    if template.startswith("~") or len(path.parts) > 1:
        if path.is_file():
            return path
        raise UserError(f"{key}: {template}: prompt template not found")
    name = template if template.endswith(".j2") else f"{template}.j2"
    folders = template_folders(domain)
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    if path.is_file():  # a file name in the working directory
        return path
    raise UserError(f"{key}: {template}: prompt template not found (looked in {', '.join(map(str, folders))})")


class PromptBuilder:
    """Renders a prompt template through the tokenizer's chat template, within a token budget.

    `template` is a bundled name or a .j2 file path (`find_template`); `templates_dir` replaces the
    bundled folders (tests); `key` is the config key named in errors."""

    def __init__(self, tokenizer, template: str, *, max_prompt_tokens: int = 512, domain: str = "movies",
                 templates_dir: Path | None = None, key: str = "generate.templates"):
        import jinja2

        self.tokenizer = tokenizer
        self.budget = max_prompt_tokens
        self.domain = domain
        if templates_dir:
            path = Path(templates_dir) / (template if template.endswith(".j2") else f"{template}.j2")
            if not path.is_file():
                raise UserError(f"{key}: {path}: prompt template not found")
        else:
            path = find_template(template, domain, key)
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(path.parent)),
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        try:
            self.template = env.get_template(path.name)
        except jinja2.TemplateNotFound:
            raise UserError(f"{key}: {path}: prompt template not found") from None
        except jinja2.TemplateSyntaxError as err:
            raise UserError(f"{path}: line {err.lineno}: {err.message}") from None
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
            specials.add(getattr(added, "content", str(added)))
        self.special_tokens = sorted(t for t in specials if t)

    def safe(self, text: Any) -> str:
        return neutralise(text, self.special_tokens)

    def _item_vars(self, catalog, i: int, rating: float | None = None) -> dict:
        return {
            "text": self.safe(catalog.describe(i)),
            "title": self.safe(catalog.titles[i]),
            "year": catalog.years[i],
            "genres": [self.safe(g) for g in catalog.genres[i]],
            "rating": _format_rating(rating),
        }

    def render(self, **variables) -> str:
        """The chat-formatted prompt text for one set of template variables."""
        import jinja2

        variables.setdefault("domain", self.domain)
        try:
            module = self.template.make_module(variables)
        except jinja2.UndefinedError as err:
            raise UserError(f"{self.template.filename}: {err.message}") from None
        user = str(module).strip()
        system = str(getattr(module, "system", "") or "").strip()
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return (system + "\n\n" if system else "") + user + "\n\n"

    def encode(self, text: str) -> list[int]:
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        return list(self.tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def history_prompt(self, key: str, catalog, history: Sequence[int], ratings: Sequence[float | None] | None = None,
                       profile: dict | None = None, **extra) -> Prompt:
        """A prompt over a history (oldest first), keeping the NEWEST items that fit the budget."""
        ratings = list(ratings) if ratings is not None else [None] * len(history)
        items = [self._item_vars(catalog, i, r) for i, r in zip(history, ratings)]
        base = {
            "profile": {self.safe(k): self.safe(v) for k, v in (profile or {}).items()},
            "has_ratings": any(r is not None for r in ratings),
            "rating_scale": 5,
            # which item fields this data has, so a domain-neutral template asks only about those
            "fields": {"genres": any(item["genres"] for item in items),
                       "year": any(item["year"] is not None for item in items)},
            **extra,
        }

        def build(n_keep: int) -> tuple[str, list[int]]:
            kept = items[len(items) - n_keep:] if n_keep else []
            text = self.render(history=kept, n_omitted=len(items) - n_keep, **base)
            return text, self.encode(text)

        lo, hi = 1, len(items)  # keep at least one item even if it alone exceeds the budget
        text, ids = build(hi)
        if len(ids) > self.budget and hi > 1:
            best = None
            while lo <= hi:  # largest n_keep that fits (token count grows with n_keep)
                mid = (lo + hi) // 2
                t, i = build(mid)
                if len(i) <= self.budget:
                    best, lo = (mid, t, i), mid + 1
                else:
                    hi = mid - 1
            n_keep, text, ids = best if best else (1, *build(1))
        else:
            n_keep = len(items)
        return Prompt(key, text, ids, {"n_history": n_keep, "n_omitted": len(items) - n_keep})

    def item_prompt(self, key: str, catalog, i: int) -> Prompt:
        text = self.render(item=self._item_vars(catalog, i))
        return Prompt(key, text, self.encode(text), {})
