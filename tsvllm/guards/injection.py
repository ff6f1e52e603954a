"""InjectionGuard: heuristics for direct and indirect prompt injection.

Rules (category, weight). With the default ``threshold=1.0`` one strong rule (1.0) acts, and
two weak ones (0.5) of different categories within ``proximity`` characters together act:

* ``injection.ignore_instructions`` (1.0) - "ignore/disregard/forget all previous
  instructions", "ignore the above and say...", "forget everything you were told";
  "disregard *my* previous instructions" (a user correcting themselves) does not match;
* ``injection.system_prompt`` (1.0) - "reveal/print/repeat your system prompt", "repeat the
  words above"; "what is your system prompt" (0.5);
* ``injection.role_override`` - "you are now an unrestricted AI" (1.0), "you are no longer
  bound by..." (1.0), "act as an unfiltered model" (1.0), "pretend ... without restrictions"
  (1.0); a bare "you are now" (0.5) and "from now on you will" (0.5);
* ``injection.jailbreak`` - "do anything now", "developer mode enabled" (1.0); the
  upper-case token "DAN", "without ethical restrictions", "stay in character" (0.5 each);
  the word "jailbreak" (0.25);
* ``injection.role_tag`` (1.0) - chat-template markers inside user or retrieved text:
  ``<|im_start|>system``, ``<|eot_id|>``, ``[INST]``, ``<<SYS>>``, ``</system>``, and a line
  starting ``### System:`` / ``### Assistant:``;
* ``injection.addressed_to_ai`` (0.5) - "note to the AI", "message for the assistant";
* ``injection.new_instructions`` (0.5) - "new instructions:", "updated rules:";
* ``injection.hidden_text`` (1.0) - 8+ characters hidden in Unicode tag characters (they
  render as nothing); the hidden text is also checked with every rule above;
* ``injection.encoded`` - a base64 blob (24+ characters) that decodes to text matching the
  rules above; weighted like the rules it matched.

Matching runs on the folded text (NFKC, invisible characters removed, look-alike letters
mapped), case-insensitively, with any whitespace between words, so ``I g n o r e`` is not
caught but ``Ign\u200bore ａｌｌ previous instructions`` is. These are heuristics: they
stop the common, copy-pasted attacks and cost little; pair them with an LLM judge for the rest.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tsvllm.guards.base import Action, Finding, RuleGuard, Stage
from tsvllm.textfold import decode_tag_chars, fold, fold_with_map

__all__ = ["InjectionGuard"]

LABEL = "[REDACTED:INJECTION]"

_OBJ = (
    r"(?:instructions?|prompts?|rules|directives?|directions|guidelines|guardrails|"
    r"restrictions|constraints|programming|commands|context|orders|polic(?:y|ies))\b"
)
_REVEAL = (
    "reveal",
    "print",
    "show",
    "display",
    "output",
    "repeat",
    "leak",
    "dump",
    "disclose",
    "expose",
    "recite",
    "echo",
    "spell",
    "write",
    "copy",
    "return",
    "tell",
    "give",
    "share",
)


@dataclass(frozen=True)
class _Rule:
    """A rule matched (anchored) wherever one of ``starts`` occurs in the folded text.

    ``pattern`` must begin by matching the start word. ``before``, when set, must match the
    text just before it (it ends with ``$``); the finding then starts where ``before`` does.
    Matching runs on the case-folded text, so patterns are lower-case.
    """

    category: str
    weight: float
    starts: tuple[str, ...]
    pattern: str
    before: str | None = None


_RULES = (
    _Rule(
        "injection.ignore_instructions",
        1.0,
        ("ignore", "disregard", "forget", "override", "bypass", "neglect"),
        r"(?:ignore|disregard|forget|override|bypass|neglect)\s+"
        r"(?:(?:all|the|of|these|those)\s+){0,2}"
        r"(?:all|any\s+(?:previous|prior)|previous|prior|above|earlier|preceding|foregoing|"
        r"initial|original|system|developer|your|safety|every)\s+"
        r"(?:(?:the|of|previous|prior|above|earlier|system|developer|given|initial|original|"
        r"safety|other|existing)\s+){0,3}" + _OBJ,
    ),
    _Rule(
        "injection.ignore_instructions",
        1.0,
        ("ignore", "disregard", "forget"),
        r"(?:ignore|disregard|forget)\s+(?:everything|anything|all(?:\s+that)?)\s+"
        r"(?:above|before|prior|previously|you(?:'ve|\s+have|\s+were|\s+got)\s+"
        r"(?:been\s+)?(?:told|given|instructed|taught))",
    ),
    _Rule(
        "injection.ignore_instructions",
        1.0,
        ("ignore", "disregard"),
        r"(?:ignore|disregard)\s+(?:the\s+)?(?:above|previous|preceding)\s*"
        r"(?:text|prompt|input|message)?\s*(?:and|,|\.|;)\s*(?:instead\s+)?"
        r"(?:say|print|write|output|respond|reply|tell|repeat|translate|return)\b",
    ),
    _Rule(
        "injection.system_prompt",
        1.0,
        _REVEAL,
        r"(?:" + "|".join(_REVEAL) + r")(?:\s+(?:out|me|us|back))?\s+"
        r"(?:(?:me|us|back|out|your|the|its|all|of|full|entire|complete|whole|exact|verbatim|"
        r"current)\s+){0,4}"
        r"(?:system|hidden|secret|initial|original|developer|internal|confidential|pre-?)\s*"
        r"(?:prompts?|instructions?|messages?|directives?|rules|configuration)\b",
    ),
    _Rule(
        "injection.system_prompt",
        1.0,
        ("repeat",),
        r"repeat\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:words|text|everything|sentences?|lines)"
        r"\s+(?:above|before)",
    ),
    _Rule(
        "injection.system_prompt",
        0.5,
        ("what",),
        r"what\s+(?:is|are|was|were)\s+your\s+(?:system|initial|original|hidden|secret)\s+"
        r"(?:prompt|instructions?)",
    ),
    _Rule(
        "injection.role_override",
        1.0,
        ("you", "act", "behave", "respond"),
        r"(?:you\s+are\s+(?:now\s+)?|(?:act|behave|respond)\s+as\s+)(?:(?:a|an|the|in)\s+)?"
        r"(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unaligned)\s+"
        r"(?:\w+\s+){0,2}?(?:ai|assistant|model|chatbot|bot|mode|version|persona|llm)\b",
    ),
    _Rule(
        "injection.role_override",
        1.0,
        ("you",),
        r"you\s+are\s+no\s+longer\s+(?:bound|restricted|limited|constrained|required|"
        r"an?\s+(?:ai|assistant|language\s+model)|chatgpt|claude|llama)",
    ),
    _Rule(
        "injection.role_override",
        1.0,
        ("pretend",),
        r"pretend\s+(?:to\s+be|you\s+are|that\s+you\s+are)\b[^.\n]{0,80}?"
        r"\b(?:no|without|free\s+(?:of|from))\s+(?:any\s+)?"
        r"(?:restrictions|rules|limits|limitations|filters|guidelines|censorship)",
    ),
    _Rule("injection.role_override", 0.5, ("you",), r"you\s+are\s+now\b"),
    _Rule(
        "injection.role_override",
        0.5,
        ("from",),
        r"from\s+now\s+on,?\s+you\s+(?:are|will|must|shall|should|can|have\s+to)\b",
    ),
    _Rule("injection.jailbreak", 1.0, ("anything",), r"anything\s+now\b", r"\bdo\s+$"),
    _Rule(
        "injection.jailbreak",
        1.0,
        ("developer", "god", "jailbreak", "dan", "unrestricted"),
        r"(?:developer|god|jailbreak|dan|unrestricted)\s+mode\s+(?:is\s+(?:now\s+)?)?"
        r"(?:enabled|activated|on|active)\b",
    ),
    _Rule(
        "injection.jailbreak",
        1.0,
        ("enable", "activate", "enter"),
        r"(?:enable|activate|enter)\s+(?:developer|god|jailbreak|dan|unrestricted)\s+mode\b",
    ),
    _Rule(
        "injection.jailbreak",
        0.25,
        ("jailbreak", "jailbroken", "jailbreaking"),
        r"jailbr(?:eak|oken|eaking)\b",
    ),
    _Rule(
        "injection.jailbreak",
        0.5,
        ("ethical", "moral", "safety", "content"),
        r"(?:ethical|moral|safety|content)\s+(?:restrictions|guidelines|filters?|"
        r"limitations|constraints|policies|rules)\b",
        r"\b(?:without|no|ignore|remove|bypass|disable)\s+(?:(?:any|all|your)\s+)?$",
    ),
    _Rule("injection.jailbreak", 0.5, ("stay",), r"stay\s+in\s+character\b"),
    _Rule(
        "injection.role_tag",
        1.0,
        ("<|",),
        r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|begin_of_text|"
        r"start_header_id|end_header_id|eot_id|eom_id)\|>",
    ),
    _Rule("injection.role_tag", 1.0, ("[inst", "[/inst"), r"\[/?inst\]"),
    _Rule("injection.role_tag", 1.0, ("<<sys", "<</sys"), r"<</?sys>>"),
    _Rule("injection.role_tag", 1.0, ("<system", "</system"), r"</?system>"),
    _Rule(
        "injection.role_tag",
        1.0,
        ("##",),
        r"#{2,}[ \t]*(?:system|assistant)[ \t]*:",
        r"(?:^|\n)[ \t]*$",
    ),
    _Rule(
        "injection.addressed_to_ai",
        0.5,
        ("note", "message", "instruction", "instructions", "attention", "important"),
        r"(?:note|message|instructions?|attention|important)\s+(?:to|for)\s+(?:the\s+|any\s+)?"
        r"(?:ai|llm|language\s+model|assistant|chatbot|bot|model|gpt|agent)s?\b",
    ),
    _Rule(
        "injection.new_instructions",
        0.5,
        ("new", "updated", "real", "actual", "true", "revised"),
        r"(?:new|updated|real|actual|true|revised)\s+(?:system\s+)?"
        r"(?:instructions?|directives?|rules)\s*:",
    ),
)
_DAN = r"\bDAN\b"  # case-sensitive, on the original text


@functools.lru_cache(maxsize=1)
def _word_table() -> bytes:
    """A ``bytes.translate`` table: ASCII letters, digits, ``_`` and non-ASCII bytes kept,
    everything else → space (so ``split()`` yields the words)."""
    keep = set(range(48, 58)) | set(range(65, 91)) | set(range(97, 123)) | {95}
    return bytes(c if c in keep or c >= 128 else 32 for c in range(256))


_BASE64 = r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{24,}={0,2}(?![A-Za-z0-9+/=_-])"
_MAX_BLOBS = 16
_MAX_BLOB_CHARS = 16384
_MIN_HIDDEN = 8
_MIN_RUN = 16  # the base64 search runs only when some word is at least this long


def _decode_base64(blob: str) -> str | None:
    """The blob decoded as UTF-8 text, or None when it is not base64 of mostly text."""
    if len(blob) > _MAX_BLOB_CHARS:
        return None
    raw = blob.rstrip("=")
    raw += "=" * (-len(raw) % 4)
    altchars = b"-_" if ("-" in raw or "_" in raw) else None
    try:
        data = base64.b64decode(raw, altchars=altchars, validate=True)
        text = data.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(c.isprintable() or c in "\n\r\t" for c in text)
    return text if text and printable >= 0.9 * len(text) else None


class InjectionGuard(RuleGuard):
    """Prompt-injection heuristics (categories ``injection.*``); see the module docstring.

    Defaults: ``mode="block"``, stages ``input`` and ``context``, ``threshold=1.0``.
    ``decode_base64`` and ``hidden_text`` switch those checks. Signals add up only when they
    are within ``proximity`` characters of each other, so a long document does not collect
    unrelated weak signals into a block. In redact mode the matched phrases (and hidden or
    encoded payloads) become ``[REDACTED:INJECTION]``.
    """

    name = "injection"
    default_stages = (Stage.INPUT, Stage.CONTEXT)

    def __init__(
        self,
        *,
        mode: Action | str = Action.BLOCK,
        stages: Iterable[Stage | str] | None = None,
        threshold: float = 1.0,
        decode_base64: bool = True,
        hidden_text: bool = True,
        proximity: int = 300,
        name: str | None = None,
    ) -> None:
        super().__init__(mode=mode, stages=stages, threshold=threshold, name=name)
        if proximity < 0:
            raise ValueError(f"proximity must be >= 0, not {proximity!r}")
        self.proximity = int(proximity)
        self.decode_base64 = bool(decode_base64)
        self.hidden_text = bool(hidden_text)
        # start → [(category, weight, pattern, before-pattern)]; word starts are looked up in
        # the text's set of words first, the few punctuation starts with a character test
        self._word_starts: dict[bytes, tuple[str, list[Any]]] = {}
        self._punct_starts: dict[str, list[Any]] = {}
        for rule in _RULES:
            compiled = (
                rule.category,
                rule.weight,
                re.compile(rule.pattern),
                re.compile(rule.before) if rule.before else None,
            )
            for start in rule.starts:
                if start.isalnum():
                    entry = self._word_starts.setdefault(start.encode(), (start, []))
                    entry[1].append(compiled)
                else:
                    self._punct_starts.setdefault(start, []).append(compiled)
        self._dan = re.compile(_DAN)
        self._base64 = re.compile(_BASE64)

    def score(self, findings: Iterable[Finding]) -> float:
        """The best :meth:`RuleGuard.score` of findings within ``proximity`` of each other."""
        ordered = sorted(findings, key=lambda f: f.start)
        best = 0.0
        for i, first in enumerate(ordered):
            near = []
            for f in ordered[i:]:
                if f.start - first.start > self.proximity:
                    break
                near.append(f)
            best = max(best, super().score(near))
        return best

    @staticmethod
    def _words(folded: str) -> list[bytes]:
        """The words of ``folded`` (runs of letters, digits and ``_``), as bytes."""
        return folded.encode("utf-8", "replace").translate(_word_table()).split()

    def _match(
        self, folded: str, words: list[bytes] | None = None
    ) -> list[tuple[int, int, str, float]]:
        """Rule matches in folded text: ``(start, end, category, weight)``.

        Rules are tried only where their start word occurs: one pass splits the text into a
        set of words (bytes ops, fast), and ``str.find`` locates the words that are present,
        so the cost grows with the words that occur, not with the number of rules.
        """
        present = set(self._words(folded) if words is None else words)
        out: list[tuple[int, int, str, float]] = []
        for key, (start, rules) in self._word_starts.items():
            if key in present:
                self._match_at(folded, start, rules, True, out)
        for start, rules in self._punct_starts.items():
            if start[0] in folded:
                self._match_at(folded, start, rules, False, out)
        return out

    @staticmethod
    def _match_at(folded: str, start: str, rules: list[Any], word: bool, out: list[Any]) -> None:
        i = folded.find(start)
        while i >= 0:
            if not (word and i and (folded[i - 1].isalnum() or folded[i - 1] == "_")):
                for category, weight, rx, before in rules:
                    m = rx.match(folded, i)
                    if m is None:
                        continue
                    s = i
                    if before is not None:
                        b = before.search(folded, max(0, i - 40), i)
                        if b is None:
                            continue
                        s = b.start()
                    out.append((s, m.end(), category, weight))
            i = folded.find(start, i + 1)

    def find(self, text: str) -> list[Finding]:
        """All injection findings in ``text`` (spans in ``text`` offsets)."""
        out: list[Finding] = []
        folded = fold(text)
        words = self._words(folded)
        hits = self._match(folded, words)
        if hits and not text.isascii():  # map the spans back to the original text
            unit_folded, offsets = fold_with_map(text)
            if unit_folded != folded:  # NFKC composed across characters: re-match
                hits = self._match(unit_folded) or [
                    (0, len(unit_folded), "injection.ignore_instructions", 1.0)
                ]
            hits = [(*offsets.span(a, b), category, weight) for a, b, category, weight in hits]
        out += [Finding(s, e, category, LABEL, weight) for s, e, category, weight in hits]
        if "DAN" in text:
            out += [
                Finding(*m.span(), "injection.jailbreak", LABEL, 0.5)
                for m in self._dan.finditer(text)
            ]
        if self.hidden_text:
            for s, e, hidden in decode_tag_chars(text):
                if len(hidden.strip()) >= _MIN_HIDDEN:
                    out.append(Finding(s, e, "injection.hidden_text", LABEL))
                    out += self._payload_findings(s, e, hidden, "injection.hidden_text")
        if self.decode_base64 and self._may_hold_base64(text, folded, words):
            for i, m in enumerate(self._base64.finditer(text)):
                if i >= _MAX_BLOBS:
                    break
                decoded = _decode_base64(m.group())
                if decoded is not None:
                    s, e = m.span()
                    out += self._payload_findings(s, e, decoded, "injection.encoded")
        return out

    @staticmethod
    def _may_hold_base64(text: str, folded: str, words: list[bytes]) -> bool:
        """Cheap test before the base64 search: base64 of text has a long run of letters and
        digits in mixed case, with digits unless it is very long (prose, snake_case and
        camelCase names and hex digests do not)."""
        if not words or max(map(len, words)) < _MIN_RUN:
            return False
        lowered = text if text.isascii() else text.lower()
        if len(lowered) != len(text) or (lowered is not text and lowered != folded):
            return True  # offsets in the folded text do not match the text's: just search
        for w in words:
            if len(w) < _MIN_RUN:
                continue
            p = folded.find(w.decode("utf-8", "replace"))
            seg = text[p : p + len(w)] if p >= 0 else ""
            mixed = any(c.isupper() for c in seg) and any(c.islower() for c in seg)
            if mixed and (len(seg) >= 24 or any(c.isdigit() for c in seg)):
                return True
        return False

    def _payload_findings(self, s: int, e: int, payload: str, via: str) -> list[Finding]:
        """Rule matches inside a hidden or encoded payload, reported on its span."""
        hits = self._match(fold(payload))
        if not hits:
            return []
        cats = dict.fromkeys(h[2] for h in hits)
        if via == "injection.hidden_text":  # the hidden text itself already counts
            return [Finding(s, e, cat, LABEL, 0.0) for cat in cats]
        best: dict[str, float] = {}
        for _, _, cat, weight in hits:
            best[cat] = max(best.get(cat, 0.0), weight)
        out = [Finding(s, e, via, LABEL, sum(best.values()))]
        out += [Finding(s, e, cat, LABEL, 0.0) for cat in cats]
        return out
