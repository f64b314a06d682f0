"""Text normalisation: numbers, punctuation, case, spelling; stable on the corpus texts."""

from __future__ import annotations

import re

import pytest
from num2words import num2words

from speech.eval.text import expand_numbers, normalize_text, spell_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("We counted 12 boats.", "we counted twelve boats"),
        ("He wrote 2024 on the board.", "he wrote two thousand twenty four on the board"),
        ("It was finished in 1889.", "it was finished in eighteen eighty nine"),  # a year, as it is read
        ("in 1905, 1900 and 1999", "in nineteen oh five nineteen hundred and nineteen ninety nine"),
        ("1099 and 2000", "one thousand ninety nine and two thousand"),  # outside 1100-1999: cardinal
        ("1,889 people", "one thousand eight hundred eighty nine people"),  # grouped: an amount
        ("$1889 or 1889% or the 1889th", "one thousand eight hundred eighty nine dollars or one thousand eight "
         "hundred eighty nine percent or the one thousand eight hundred eighty ninth"),
        ("1889.5 and 3.1889", "one thousand eight hundred eighty nine point five and three point one eight eight nine"),
        ("250 grams", "two hundred fifty grams"),
        ("1,000,000 people", "one million people"),
        ("closed until the 3rd of May", "closed until the third of may"),
        ("the 21ST century", "the twenty first century"),
        ("the 1st, 2nd and 45th", "the first second and forty fifth"),
        ("leaves at 7:45", "leaves at seven forty five"),
        ("at 7:05 or 12:00", "at seven oh five or twelve o'clock"),
        ("pi is 3.14", "pi is three point one four"),
        ("agent 007", "agent zero zero seven"),
        ("50% off", "fifty percent off"),
        ("2.5%", "two point five percent"),
        ("$5.50 and £1", "five dollars fifty cents and one pound"),
        ("0 and 101", "zero and one hundred one"),
    ],
)
def test_numbers_become_words(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_a_spoken_year_scores_as_the_digits_a_recogniser_writes() -> None:
    # the demo corpora say "built in nineteen forty"; Whisper writes "1940"
    for year in (1100, 1105, 1889, 1900, 1940, 1999):
        spoken = num2words(year, to="year")
        assert normalize_text(f"Built in {spoken}.") == normalize_text(f"built in {year}"), year
    # the year reading is English: other languages keep the cardinal
    assert normalize_text("1889", lang="de") == spell_number("1889", lang="de")


def test_spell_number_rules() -> None:
    assert spell_number("45") == "forty five"
    assert spell_number("0042") == "zero zero four two"  # a leading zero reads digit by digit
    assert spell_number("1" * 16) == " ".join(["one"] * 16)  # an identifier, not a quantity
    assert expand_numbers("no digits here") == "no digits here"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("Where is my coat?", "where is my coat"),
        ("  Nobody   expected\tit... ", "nobody expected it"),
        ("Thank you, Anna!", "thank you anna"),
        ("a well-known fact; (really) — yes", "a well known fact really yes"),
        ("\"Quoted\" and 'single' quotes", "quoted and single quotes"),
        ("The baker wakes at four o\u2019clock.", "the baker wakes at four o'clock"),
        ("DON'T SHOUT", "don't shout"),
        ("Café CRÈME", "café crème"),
        ("\ufb01ne", "fine"),  # NFKC folds the ligature
        ("", ""),
        ("?!...", ""),
    ],
)
def test_punctuation_and_case(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_british_spellings_become_american() -> None:
    text = "Our neighbours painted the grey harbour; 8 kilometres, centred, favourite colours."
    assert normalize_text(text) == "our neighbors painted the gray harbor eight kilometers centered favorite colors"
    # words that only look like "-our" words are left alone
    assert normalize_text("four hours, your tour, our flour") == "four hours your tour our flour"
    assert normalize_text("the grey harbour", american_spelling=False) == "the grey harbour"


def test_corpus_texts_normalise_to_plain_words(test_items) -> None:
    for item in test_items:
        norm = normalize_text(item.text)
        assert norm and re.fullmatch(r"[a-z']+( [a-z']+)*", norm), (item.text, norm)
        assert normalize_text(norm) == norm  # idempotent
