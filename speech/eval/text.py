"""Text normalisation for WER/CER: both the reference and the ASR hypothesis go through it.

The rule set is small and predictable on purpose (a WER is only comparable when everyone can tell
what was normalised): Unicode NFKC, lower case, numbers spelled out as words, punctuation and
symbols removed (apostrophes inside words such as ``o'clock`` and ``don't`` are kept), hyphens
split words, whitespace collapsed. For English, common British spellings become American ones
(``neighbours`` -> ``neighbors``, ``kilometres`` -> ``kilometers``, ``grey`` -> ``gray``): recognisers
with an American lexicon cannot spell them otherwise, and a spelling is not a recognition error.

Numbers: ``12`` -> ``twelve``; ``2,024`` / ``2024`` -> ``two thousand twenty four`` (cardinal,
American style without "and"), except that in English a bare ``1100``-``1999`` is a year, as it is read aloud and as
recognisers write a spoken year: ``1889`` -> ``eighteen eighty nine``, ``1905`` -> ``nineteen oh five``
(``1,889``, ``$1889``, ``1889%``, ``1889th`` and ``1880s`` stay cardinal); ``3rd`` -> ``third``;
``7:45`` -> ``seven forty five``, ``7:05`` -> ``seven oh five``, ``7:00`` -> ``seven o'clock``;
``3.14`` -> ``three point one four``; ``50%`` -> ``fifty percent``; ``$5`` -> ``five dollars``;
``007`` -> ``zero zero seven``.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

__all__ = ["normalize_text", "spell_number", "expand_numbers"]

# Beyond this, a digit string is an identifier rather than a quantity: read it digit by digit.
_MAX_CARDINAL = 10**15

_CURRENCY = {"$": "dollars", "£": "pounds", "€": "euros", "¥": "yen"}
_CURRENCY_ONE = {"$": "dollar", "£": "pound", "€": "euro", "¥": "yen"}

_GROUPED = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,]*\d)")
_CURRENCY_RE = re.compile(r"([$£€¥])\s?(\d+)(?:\.(\d{2}))?(?![\d.]*\d)")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_TIME_RE = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_ORDINAL_RE = re.compile(r"(?<![\d.])(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.]*\d)")
_INTEGER_RE = re.compile(r"\d+")
# a bare 1100-1999: not part of a longer number, an amount, a percentage, an ordinal or a decade ("1880s")
_YEAR_RE = re.compile(r"(?<![\w.,:$£€¥])1[1-9]\d\d(?![\d,.:]*\d)(?!\s?%)(?![^\W\d_])")
# British -> American spelling, as word stems. "-our" stems take the same suffixes in both spellings;
# "-re" stems map their few inflections explicitly; the rest are whole words.
_OUR_STEMS = (
    "armour behaviour colour endeavour favour flavour harbour honour humour labour neighbour odour "
    "parlour rumour savour splendour vapour"
).split()
_OUR_SUFFIXES = ("", "s", "ed", "ing", "er", "ers", "ful", "less", "able", "ite", "ites", "hood", "hoods", "ly")
_RE_STEMS = "centre metre kilometre centimetre millimetre litre theatre fibre calibre sombre spectre".split()
# fmt: off
_WORDS = {
    "grey": "gray", "greys": "grays", "jewellery": "jewelry", "programme": "program", "programmes": "programs",
    "tyre": "tire", "tyres": "tires", "plough": "plow", "ploughs": "plows", "aluminium": "aluminum",
    "defence": "defense", "offence": "offense", "licence": "license", "catalogue": "catalog",
    "pyjamas": "pajamas", "travelled": "traveled", "travelling": "traveling", "traveller": "traveler",
    "travellers": "travelers", "cancelled": "canceled", "cancelling": "canceling", "modelling": "modeling",
    "labelled": "labeled", "realise": "realize", "realised": "realized", "recognise": "recognize",
    "recognised": "recognized", "organise": "organize", "organised": "organized", "apologise": "apologize",
    "apologised": "apologized", "analyse": "analyze", "analysed": "analyzed", "practise": "practice",
    "practised": "practiced",
}
# fmt: on


def _american_spellings() -> dict[str, str]:
    table = dict(_WORDS)
    for stem in _OUR_STEMS:
        for suffix in _OUR_SUFFIXES:
            table[stem + suffix] = stem[:-2] + "r" + suffix
    for stem in _RE_STEMS:
        us = stem[:-2] + "er"
        table.update({stem: us, stem + "s": us + "s", stem[:-1] + "ed": us + "ed", stem[:-1] + "ing": us + "ing"})
    return table


_AMERICAN = _american_spellings()
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def _words(text: str) -> str:
    """num2words output -> plain words: no commas, no hyphens, no British "and"."""
    text = text.replace(",", " ").replace("-", " ")
    return " ".join(w for w in text.split() if w != "and")


def _digits(digits: str, lang: str) -> str:
    return " ".join(num2words(int(d), lang=lang) for d in digits)


def spell_number(digits: str, lang: str = "en") -> str:
    """A digit string as words: a cardinal, or digit by digit when it has a leading zero or is huge."""
    if (len(digits) > 1 and digits[0] == "0") or int(digits) >= _MAX_CARDINAL:
        return _digits(digits, lang)
    return _words(num2words(int(digits), lang=lang))


def _currency(m: re.Match, lang: str) -> str:
    symbol, whole, cents = m.group(1), m.group(2), m.group(3)
    unit = _CURRENCY_ONE[symbol] if int(whole) == 1 else _CURRENCY[symbol]
    out = f" {spell_number(whole, lang)} {unit} "
    if cents and int(cents):
        out += f"{spell_number(str(int(cents)), lang)} {'cent' if int(cents) == 1 else 'cents'} "
    return out


def _time(m: re.Match, lang: str) -> str:
    hour, minute = m.group(1), int(m.group(2))
    if minute == 0:
        return f" {spell_number(str(int(hour)), lang)} o'clock "
    minutes = spell_number(str(minute), lang)
    if minute < 10:
        minutes = "oh " + minutes
    return f" {spell_number(str(int(hour)), lang)} {minutes} "


def _decimal(m: re.Match, lang: str) -> str:
    return f" {spell_number(m.group(1), lang)} point {_digits(m.group(2), lang)} "


def expand_numbers(text: str, lang: str = "en") -> str:
    """Replace every number in ``text`` by words (see the module docstring for the rules)."""
    # years first: after the grouping commas are dropped, 1,889 would look like one. English only: other
    # languages read years otherwise (num2words' Japanese "year" is an era name)
    if lang.startswith("en"):
        text = _YEAR_RE.sub(lambda m: f" {_words(num2words(int(m.group(0)), lang=lang, to='year'))} ", text)
    text = _GROUPED.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _CURRENCY_RE.sub(lambda m: _currency(m, lang), text)
    text = _PERCENT_RE.sub(lambda m: f" {m.group(1)} percent ", text)
    text = _TIME_RE.sub(lambda m: _time(m, lang), text)
    text = _ORDINAL_RE.sub(lambda m: " " + _words(num2words(int(m.group(1)), lang=lang, to="ordinal")) + " ", text)
    text = _DECIMAL_RE.sub(lambda m: _decimal(m, lang), text)
    return _INTEGER_RE.sub(lambda m: f" {spell_number(m.group(0), lang)} ", text)


def _strip_punctuation(text: str) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "'":
            # Keep an apostrophe only between two letters/digits (o'clock, don't), drop quotes.
            inner = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(ch if inner else " ")
        elif unicodedata.category(ch)[0] in "PS":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_text(text: str, lang: str = "en", american_spelling: bool = True) -> str:
    """Canonical form for scoring: lower case, numbers as words, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = expand_numbers(text, lang).lower()
    words = _strip_punctuation(text).split()
    if american_spelling and lang.startswith("en"):
        words = [_AMERICAN.get(w, w) for w in words]
    return " ".join(words)
