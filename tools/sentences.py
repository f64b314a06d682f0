#!/usr/bin/env python3
"""A seeded generator of grammatical English sentences for the larger synthetic corpus.

Every word list and template here was written for this project and is dedicated to the public
domain (CC0 1.0), like everything the generator writes. Sentences come from a small grammar
(statements in several tenses, questions, imperatives, exclamations, passives, relative and
subordinate clauses, comparisons, lists, quoted speech) over a lexicon chosen for broad phonetic
coverage (every English phoneme, rare ones such as the ZH of "measure" and the OY of "noise"
included), with light selectional restrictions (people eat food, not bridges) so that a speech
recogniser's language model is not fighting the text. Numbers, times, dates, prices and years are
written out as words with the project's text normaliser (``speech.eval.text``), so the transcript
says exactly what the synthesizers read.

    python tools/sentences.py --n 10 --seed 0                 # print ten sentences
    python tools/sentences.py --n 2000 --coverage             # phoneme/diphone coverage (flite, espeak-ng)

``generate(n, seed)`` returns ``n`` distinct sentences (distinct after ``normalize_text``: no two
differ only in case or punctuation); the same seed gives the same list on every machine.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from num2words import num2words

from speech.eval.text import expand_numbers, normalize_text, spell_number

# ---------------------------------------------------------------------------------------------
# Lexicon. Nouns by class: the class decides which verbs and adjectives they go with.
# "singular/plural" where the plural is irregular; otherwise the plural is derived.
NOUNS = {
    "person": (
        "teacher doctor farmer baker sailor pilot singer painter builder driver nurse lawyer judge "
        "neighbour student soldier gardener plumber engineer journalist musician fisherman/fishermen "
        "child/children woman/women man/men girl boy uncle aunt cousin nephew niece grandmother "
        "grandfather visitor stranger cashier librarian mechanic chef waiter poet scientist "
        "shepherd carpenter jeweller tailor thief/thieves king queen prince duchess"
    ).split(),
    "animal": (
        "cat dog horse mouse/mice goose/geese sheep/sheep fox owl rabbit squirrel tiger zebra "
        "monkey donkey pigeon frog duck goat lamb whale dolphin turtle beetle puppy kitten pony "
        "parrot oyster/oysters wolf/wolves calf/calves"
    ).split(),
    "food": (
        "apple orange banana cherry peach sandwich cake biscuit pudding soup "
        "pepper onion potato/potatoes tomato/tomatoes carrot cucumber mushroom sausage omelette "
        "pizza pie lemon melon grape plum strawberry pumpkin yoghurt noodle pear walnut"
    ).split(),
    "object": (
        "book box chair table lamp clock letter bottle basket bucket blanket pillow mirror "
        "window door key coin ring watch umbrella jacket shoe hat scarf glove wallet ladder "
        "hammer knife/knives spoon fork cup jug kettle candle violin guitar drum trumpet camera "
        "parcel envelope ticket map pencil notebook puzzle toy rope shovel saucepan treasure "
        "picture sculpture bicycle radio telephone badge thermometer feather leaf/leaves "
        "garage vase jewel"
    ).split(),
    "place": (
        "garden kitchen library museum station harbour bridge village castle forest meadow "
        "valley island beach market bakery school hospital church cottage palace cathedral "
        "theatre cinema airport stadium zoo farm lake river mountain desert cave tunnel factory "
        "office hotel restaurant square playground"
    ).split(),
    "vehicle": "car bus train boat ship truck tram van lorry ferry plane helicopter taxi tractor".split(),
}
MASS_NOUNS = {  # no article, no plural
    "food": "rice bread cheese honey butter sugar flour chocolate coffee tea milk jam cereal yoghurt".split(),
    "stuff": "sand water snow mud wool silk leather gold silver ice smoke gravel".split(),
}
ABSTRACT = (
    "idea decision measure pleasure leisure vision question answer problem promise surprise "
    "opinion mistake journey rumour joke story lesson dream reason choice adventure"
).split()

ADJ = {
    "any": "old new small large tiny huge bright dark strange famous ordinary beautiful ugly quiet noisy".split(),
    "person": "tired happy angry clever brave curious cheerful lonely patient polite nervous anxious "
    "jealous generous thoughtful careful sleepy grumpy proud shy".split(),
    "animal": "hungry sleepy fluffy playful wild gentle shy noisy thirsty clumsy".split(),
    "food": "fresh ripe sweet sour bitter delicious warm crunchy juicy spicy salty stale".split(),
    "object": "heavy broken shiny wooden plastic expensive dusty golden silver purple orange "
    "yellow crimson beige velvet square round smooth rough".split(),
    "place": "crowded empty peaceful muddy sunny foggy busy ancient enormous beige lively".split(),
    "vehicle": "fast slow crowded empty noisy shiny rusty modern electric".split(),
}

# Verbs: "base|past|participle|ing" where irregular; regular forms are derived.
IRREGULAR = {
    "eat": "ate eaten", "buy": "bought bought", "bring": "brought brought", "catch": "caught caught",
    "choose": "chose chosen", "draw": "drew drawn", "drink": "drank drunk", "drive": "drove driven",
    "find": "found found", "forget": "forgot forgotten", "give": "gave given", "hide": "hid hidden",
    "hold": "held held", "keep": "kept kept", "leave": "left left", "lose": "lost lost", "make": "made made",
    "meet": "met met", "read": "read read", "ride": "rode ridden", "see": "saw seen", "sell": "sold sold",
    "send": "sent sent", "sing": "sang sung", "steal": "stole stolen", "take": "took taken",
    "teach": "taught taught", "throw": "threw thrown", "wear": "wore worn", "write": "wrote written",
    "hear": "heard heard", "build": "built built", "feed": "fed fed", "fly": "flew flown", "swim": "swam swum",
    "sleep": "slept slept", "run": "ran run", "sit": "sat sat", "fall": "fell fallen", "grow": "grew grown",
    "shake": "shook shaken", "freeze": "froze frozen", "break": "broke broken", "bite": "bit bitten",
    "dig": "dug dug", "win": "won won", "understand": "understood understood", "forgive": "forgave forgiven",
    "think": "thought thought", "wake": "woke woken", "sweep": "swept swept", "lend": "lent lent",
    "spend": "spent spent", "tell": "told told", "say": "said said", "stand": "stood stood",
}
DOUBLING = set("stop drop grab rob hug nod tap plan shop chat jog hop skip wrap knit dig swim run sit win".split())
# transitive verbs: subject class -> object classes
TRANSITIVE = [
    ("eat cook buy sell taste share bake slice peel wash choose bring order smell", "person", "food"),
    ("eat sniff steal find hide catch", "animal", "food"),
    ("carry find lose buy sell hide polish paint repair drop clean wrap borrow lend open steal "
     "measure weigh fetch grab examine treasure keep choose throw hold shake break", "person", "object"),
    ("visit leave clean paint photograph reach explore describe draw sweep measure guard", "person", "place"),
    ("meet call visit help thank forgive teach follow hug greet recognise invite warn amuse annoy "
     "surprise admire", "person", "person"),
    ("feed chase catch watch follow photograph draw rescue wash ride", "person", "animal"),
    ("drive park repair wash paint board catch miss", "person", "vehicle"),
    ("chase follow watch bite scare", "animal", "animal"),
    ("chase follow watch bite ignore", "animal", "person"),
]
INTRANSITIVE = [
    ("laugh smile sing shout whisper sleep cough sneeze wait arrive travel jog dance yawn "
     "complain hesitate", "person"),
    ("sleep run swim jump hide growl bark purr squeak shiver wander yawn", "animal"),
]
SAY_VERBS = "said whispered shouted explained announced replied admitted".split()
ADVERBS = (
    "quickly slowly quietly loudly carefully happily suddenly gently politely eagerly "
    "patiently cheerfully nervously proudly secretly"
).split()
TIME_PHRASES = [  # fit any tense
    "on Sunday", "on Thursday", "at dawn", "after lunch", "before breakfast", "in the evening", "at midnight",
    "on Wednesday afternoon", "during the holidays", "in June", "early in August", "on Friday evening",
]
PAST_TIMES = ["yesterday", "last night", "last winter", "two days ago", "the other week", "long ago"]
FUTURE_TIMES = ["tomorrow", "next week", "next spring", "the day after tomorrow", "soon"]
HABITUAL_TIMES = ["every weekend", "each morning", "every summer", "twice a week", "on Mondays", "usually"]
PREP_PLACE = "in near behind beside outside inside opposite".split()
NAMES = (
    "Anna Oliver Zoe Xavier Yusuf Chloe Joshua Isabella George Hugo Judith Thomas Sophie Ravi "
    "Mateo Aisha Vivian Quentin Beatrice Duncan Fatima Gareth Imogen Kevin Lucy Nathan Priya "
    "Ursula Walter Zachary Theo Ethan Jasmine Roger Heather Boris Eugene Nora"
).split()
MONTHS = "January February March April May June July August September October November December".split()
CITIES = "Paris Tokyo Cairo Glasgow Boston Vienna Lisbon Sydney Oslo Chicago Madrid Dublin".split()
INTERJ = ["Oh", "Well", "Look", "Honestly", "Of course", "Listen", "Wow", "Goodness"]


# ---------------------------------------------------------------------------------------------
# Morphology
def _split(entry: str) -> tuple[str, str]:
    sing, _, plural = entry.partition("/")
    return sing, plural or plural_of(sing)


def plural_of(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")) or noun in ("tomato", "potato"):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def third_person(verb: str) -> str:
    if verb in ("have",):
        return "has"
    return plural_of(verb) if verb not in ("go", "do") else verb + "es"


def past(verb: str) -> str:
    if verb in IRREGULAR:
        return IRREGULAR[verb].split()[0]
    return _regular_ed(verb)


def participle(verb: str) -> str:
    if verb in IRREGULAR:
        return IRREGULAR[verb].split()[1]
    return _regular_ed(verb)


def _regular_ed(verb: str) -> str:
    if verb in DOUBLING:
        return verb + verb[-1] + "ed"
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def gerund(verb: str) -> str:
    if verb in DOUBLING:
        return verb + verb[-1] + "ing"
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" and not word.startswith(("uni", "eu", "use")) else "a"


# ---------------------------------------------------------------------------------------------
# Numbers as words, through the project's normaliser
def count_words(n: int) -> str:
    return spell_number(str(n))


def time_words(rng: random.Random) -> str:
    hour, minute = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 25, 30, 40, 45, 50, 55])
    return expand_numbers(f"{hour}:{minute:02d}").strip()


def date_words(rng: random.Random) -> str:
    day = rng.randint(1, 28)
    return f"the {expand_numbers(f'{day}th' if day > 3 else ['1st', '2nd', '3rd'][day - 1]).strip()} of {rng.choice(MONTHS)}"


def year_words(rng: random.Random) -> str:
    return num2words(rng.randint(1850, 1999), to="year").replace("-", " ")


def price_words(rng: random.Random) -> str:
    return expand_numbers(f"${rng.choice([2, 3, 5, 7, 9, 12, 15, 20, 35, 48, 60, 99, 120, 250])}").strip()


class Grammar:
    """Sentence templates over the lexicon; every random choice comes from ``rng``."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nouns = {cls: [_split(e) for e in entries] for cls, entries in NOUNS.items()}

    def pick(self, seq):
        return self.rng.choice(seq)

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    # noun phrases -----------------------------------------------------------------------------
    def np(self, cls: str, plural: bool | None = None, allow_name: bool = True) -> tuple[str, bool]:
        """A noun phrase of class ``cls``; returns (text, is_plural)."""
        if cls == "person" and allow_name and self.maybe(0.25):
            return self.pick(NAMES), False
        if cls == "food" and self.maybe(0.2):
            return self.pick(MASS_NOUNS["food"]), False
        sing, plur = self.pick(self.nouns[cls])
        plural = self.maybe(0.3) if plural is None else plural
        noun = plur if plural else sing
        adj = ""
        if self.maybe(0.45):
            adj = self.pick(ADJ[cls] + ADJ["any"]) + " "
            if self.maybe(0.12):
                adj = self.pick(ADJ["any"]) + " " + adj
        if plural:
            det = self.pick(["the", "the", "some", "two", "three", "several", "many", "my", "our", "their",
                             "these", "those", count_words(self.rng.randint(4, 60))])
        else:
            det = self.pick(["the", "the", "the", "a", "my", "your", "his", "her", "our", "that", "this", "every"])
            if det == "a":
                det = article(adj or noun)
        return f"{det} {adj}{noun}", plural

    def place_np(self) -> str:
        if self.maybe(0.15):
            return self.pick(CITIES)
        return self.np("place", plural=False)[0]

    def subject(self, cls: str) -> tuple[str, bool, str]:
        """A subject: (text, plural, person), person '1s', '2', '3s', '1p', '3p'."""
        if cls == "person" and self.maybe(0.3):
            pron = self.pick([("I", False, "1s"), ("you", True, "2"), ("he", False, "3s"), ("she", False, "3s"),
                              ("we", True, "1p"), ("they", True, "3p")])
            return pron
        text, plural = self.np(cls)
        return text, plural, "3p" if plural else "3s"

    # verb phrases ------------------------------------------------------------------------------
    def tense(self, verb: str, person: str, plural: bool) -> str:
        t = self.pick(["past", "past", "past", "present", "future", "perfect", "progressive", "modal", "pastprog"])
        self.last_tense = t
        third = person == "3s"
        if t == "past":
            return past(verb)
        if t == "present":
            return third_person(verb) if third else verb
        if t == "future":
            return "will " + verb
        if t == "perfect":
            return ("has " if third else "have ") + participle(verb)
        if t == "progressive":
            be = "am" if person == "1s" else "is" if third else "are"
            return f"{be} {gerund(verb)}"
        if t == "pastprog":
            return ("was " if person in ("1s", "3s") else "were ") + gerund(verb)
        return self.pick(["can", "could", "should", "might", "must", "would"]) + " " + verb

    def transitive(self):
        verbs, subj_cls, obj_cls = self.pick(TRANSITIVE)
        return self.pick(verbs.split()), subj_cls, obj_cls

    def object_np(self, cls: str) -> str:
        if cls == "person" and self.maybe(0.2):
            return self.pick(["me", "him", "her", "us", "them"])
        return self.np(cls)[0]

    def pp(self) -> str:
        return f"{self.pick(PREP_PLACE)} {self.place_np()}"

    def clause(self) -> str:
        """A finite clause without final punctuation, lower-case start except names/I."""
        if self.maybe(0.75):
            verb, s_cls, o_cls = self.transitive()
            subj, plural, person = self.subject(s_cls)
            out = f"{subj} {self.tense(verb, person, plural)} {self.object_np(o_cls)}"
        else:
            verbs, s_cls = self.pick(INTRANSITIVE)
            verb = self.pick(verbs.split())
            subj, plural, person = self.subject(s_cls)
            out = f"{subj} {self.tense(verb, person, plural)}"
            if self.maybe(0.5):
                out += " " + self.pick(ADVERBS)
        if self.maybe(0.3):
            out += " " + self.pp()
        if self.maybe(0.25):
            out += " " + self.time_phrase(self.last_tense)
        return out

    def time_phrase(self, tense: str) -> str:
        """A time adverbial that agrees with ``tense``."""
        extra = {"past": PAST_TIMES, "pastprog": PAST_TIMES, "future": FUTURE_TIMES, "modal": FUTURE_TIMES,
                 "present": HABITUAL_TIMES}.get(tense, [])
        return self.pick(TIME_PHRASES + 2 * extra)

    # templates --------------------------------------------------------------------------------
    def statement(self):
        return self.clause() + "."

    def compound(self):
        return f"{self.clause()}, {self.pick(['and', 'but', 'so', 'yet'])} {self.clause()}."

    def subordinate(self):
        conj = self.pick(["When", "Because", "Although", "After", "Before", "While", "Since", "Unless", "If"])
        return f"{conj} {self.clause()}, {self.clause()}."

    def relative(self):
        verb, s_cls, o_cls = self.transitive()
        head, plural = self.np(s_cls, allow_name=False) if s_cls == "person" else self.np(s_cls)
        rel = "who" if s_cls == "person" else "that"
        be = "were" if plural else "was"
        adj = self.pick(ADJ.get(s_cls, ADJ["any"]))
        return f"{head} {rel} {past(verb)} {self.object_np(o_cls)} {be} {adj}."

    def yes_no(self):
        verb, s_cls, o_cls = self.transitive()
        subj, plural, person = self.subject(s_cls)
        aux = self.pick(["Did", "Will", "Can", "Could", "Should", "Would",
                         "Does" if person == "3s" else "Do",
                         "Has" if person == "3s" else "Have"])
        form = participle(verb) if aux in ("Has", "Have") else verb
        return f"{aux} {subj} {form} {self.object_np(o_cls)}?"

    def wh_question(self):
        verb, s_cls, o_cls = self.transitive()
        subj, plural, person = self.subject(s_cls)
        wh = self.pick(["Where", "When", "Why", "How"])
        aux = self.pick(["did", "will", "could", "should", "does" if person == "3s" else "do"])
        return f"{wh} {aux} {subj} {verb} {self.object_np(o_cls)}?"

    def who_question(self):
        verb, s_cls, o_cls = self.transitive()
        return f"{self.pick(['Who', 'Which of them'])} {past(verb)} {self.object_np(o_cls)}?"

    def imperative(self):
        verb, s_cls, o_cls = self.transitive()
        while s_cls != "person":
            verb, s_cls, o_cls = self.transitive()
        head = self.pick(["Please", "", "", "Don't", "Never", "Always", "Quickly,"])
        body = f"{verb} {self.object_np(o_cls)}"
        if self.maybe(0.4):
            body += " " + self.pp()
        return f"{head} {body}".strip() + self.pick([".", ".", "!"])

    def exclamation(self):
        cls = self.pick(["object", "place", "animal", "food"])
        sing, plur = self.pick(self.nouns[cls])
        adj = self.pick(ADJ[cls])
        if self.maybe(0.5):
            return f"What {article(adj)} {adj} {sing}!"
        return f"How {adj} the {plur} {self.pick(['are', 'were', 'look', 'seemed'])}!"

    def copula(self):
        cls = self.pick(["person", "animal", "food", "object", "place", "vehicle"])
        subj, plural, person = self.subject(cls)
        be = {"1s": "was", "2": "were", "3s": "was", "1p": "were", "3p": "were"}[person]
        be = self.pick([be, be, "seemed", "looked", "became"])
        a1, a2 = self.rng.sample(ADJ[cls], 2)
        tail = f" and {a2}" if self.maybe(0.4) else ""
        return f"{subj} {be} {self.pick(['', 'very ', 'rather ', 'quite ', 'extremely '])}{a1}{tail}."

    def comparison(self):
        cls = self.pick(["animal", "object", "place", "vehicle"])
        a, b = self.np(cls, plural=False)[0], self.np(cls, plural=False)[0]
        adj = self.pick(["bigger", "smaller", "older", "heavier", "louder", "quieter", "faster", "stranger",
                         "more beautiful", "more expensive", "more famous"])
        return f"{a} {self.pick(['is', 'was', 'looks'])} {adj} than {b}."

    def passive(self):
        verb, s_cls, o_cls = self.transitive()
        obj, plural = self.np(o_cls, allow_name=False) if o_cls == "person" else self.np(o_cls)
        be = self.pick(["were", "had been"] if plural else ["was", "has been"])
        agent = self.subject(s_cls)[0]
        agent = {"I": "me", "he": "him", "she": "her", "we": "us", "they": "them"}.get(agent, agent)
        return f"{obj} {be} {participle(verb)} by {agent}."

    def existential(self):
        n = self.rng.randint(2, 40)
        cls = self.pick(["animal", "object", "vehicle", "person", "food"])
        _, plur = self.pick(self.nouns[cls])
        return f"There {self.pick(['are', 'were'])} {count_words(n)} {plur} {self.pp()}."

    def numbers(self):
        kind = self.pick(["time", "date", "year", "price", "count", "room", "distance"])
        person = self.pick(NAMES)
        if kind == "time":
            veh = self.pick(self.nouns["vehicle"])[0]
            return f"The {veh} to {self.pick(CITIES)} {self.pick(['leaves', 'left', 'arrives'])} at {time_words(self.rng)}."
        if kind == "date":
            return f"{person}'s {self.pick(['birthday', 'wedding', 'exam', 'party', 'concert'])} is on {date_words(self.rng)}."
        if kind == "year":
            return f"The {self.pick(self.nouns['place'])[0]} was built in {year_words(self.rng)}."
        if kind == "price":
            return f"{self.np('object', plural=False)[0].capitalize()} {self.pick(['costs', 'cost'])} {price_words(self.rng)}."
        if kind == "room":
            return f"Please go to room {count_words(self.rng.randint(2, 499))} on the {expand_numbers(self.pick(['1st', '2nd', '3rd', '4th', '5th', '7th'])).strip()} floor."
        if kind == "distance":
            n = count_words(self.rng.randint(2, 95))
            return f"{person} {self.pick(['walked', 'cycled', 'drove', 'swam'])} {n} {self.pick(['miles', 'kilometres', 'metres'])} {self.time_phrase('past')}."
        _, plur = self.pick(self.nouns[self.pick(["animal", "object", "food"])])
        return f"{person} counted {count_words(self.rng.randint(2, 999))} {plur}."

    def listing(self):
        cls = self.pick(["food", "object", "animal"])
        items = [self.np(cls)[0] for _ in range(3)]
        subj, plural, person = self.subject("person")
        verb = {"food": "bought", "object": "packed", "animal": "saw"}[cls]
        return f"{subj} {verb} {items[0]}, {items[1]} and {items[2]}."

    def quoted(self):
        inner = self.pick([self.statement, self.yes_no, self.imperative, self.exclamation])()
        inner = inner[0].upper() + inner[1:]
        speaker = self.pick(NAMES + ["the " + s for s, _ in self.nouns["person"]])
        if inner.endswith("."):
            inner = inner[:-1] + ","
        return f"\"{inner}\" {self.pick(SAY_VERBS)} {speaker}."

    def abstract(self):
        noun = self.pick(ABSTRACT)
        subj = self.subject("person")
        return self.pick([
            f"That was {article(noun)} {noun} nobody expected.",
            f"{subj[0]} {self.pick(['shared', 'explained', 'forgot', 'remembered', 'described'])} the {noun} {self.time_phrase('past')}.",
            f"It was a {self.pick(['great', 'rare', 'real', 'small'])} {noun} to meet {self.pick(NAMES)}.",
            f"{self.pick(INTERJ)}, what {article(noun)} {noun}!",
        ])

    def interjection(self):
        return f"{self.pick(INTERJ)}, {self.clause()}{self.pick(['.', '!'])}"

    TEMPLATES = [("statement", 6), ("compound", 3), ("subordinate", 3), ("relative", 2), ("yes_no", 3),
                 ("wh_question", 2), ("who_question", 1), ("imperative", 2), ("exclamation", 1), ("copula", 2),
                 ("comparison", 1), ("passive", 2), ("existential", 1), ("numbers", 3), ("listing", 1),
                 ("quoted", 1), ("abstract", 1), ("interjection", 1)]

    def sentence(self) -> str:
        names, weights = zip(*self.TEMPLATES)
        text = getattr(self, self.rng.choices(names, weights)[0])()
        text = " ".join(text.split())
        start = 1 if text.startswith('"') else 0
        return text[:start] + text[start].upper() + text[start + 1:]


def sentence_key(text: str) -> str:
    """What makes two sentences the same one: their normalised words."""
    return normalize_text(text)


def iter_sentences(seed: int = 0, max_words: int = 22, exclude: set[str] | None = None):
    """An endless stream of distinct sentences (by ``sentence_key``) of at most ``max_words`` words,
    fixed by ``seed``; every prefix of it is the same whatever is taken later."""
    grammar = Grammar(random.Random(seed))
    seen = set(exclude or ())
    misses = 0
    while True:
        text = grammar.sentence()
        key = sentence_key(text)
        if len(key.split()) > max_words or key in seen:
            misses += 1
            if misses > 100_000:
                raise RuntimeError(f"the grammar ran out of new sentences after {len(seen)}")
            continue
        misses = 0
        seen.add(key)
        yield text


def generate(n: int, seed: int = 0, max_words: int = 22, exclude: set[str] | None = None) -> list[str]:
    """The first ``n`` sentences of ``iter_sentences(seed, max_words, exclude)``."""
    stream = iter_sentences(seed, max_words, exclude)
    return [next(stream) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Phonetic coverage
CMU_PHONES = (  # the 39 phonemes of the CMU dictionary (flite's US English phone set, without pau)
    "aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v w y z zh"
).split()


def flite_phones(sentences: list[str]) -> list[list[str]]:
    """CMU phones per utterance (with ``pau``) as flite's US English front end says them.
    flite's ``ax`` (schwa) is counted as ``ah``, as in the CMU dictionary."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        out = subprocess.run(["flite", "-voice", "kal", "-ps", "-f", str(path), "none"],
                             check=True, capture_output=True, text=True).stdout
    return [["ah" if p == "ax" else p for p in line.split()] for line in out.splitlines() if line.strip()]


def espeak_phones(sentences: list[str], voice: str = "en-us") -> list[list[str]]:
    """espeak-ng phoneme mnemonics per clause (stress marks dropped; word boundaries joined)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        out = subprocess.run(["espeak-ng", "-q", "-x", "--sep=_", "-v", voice, "-f", str(path)],
                             check=True, capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        phones = [p.strip("',") for word in line.split() for p in word.split("_")]
        if phones := [p for p in phones if p]:
            lines.append(phones)
    return lines


def coverage(utterances: list[list[str]]) -> dict:
    """Distinct phones and diphones (adjacent pairs inside an utterance) with their counts."""
    phones, diphones = Counter(), Counter()
    for seq in utterances:
        phones.update(seq)
        diphones.update(zip(seq, seq[1:]))
    return {"phones": phones, "diphones": diphones}


def coverage_report(sentences: list[str]) -> dict:
    """Coverage figures for ``sentences``; needs flite (CMU phones) and espeak-ng (its own set)."""
    report = {}
    if shutil.which("flite"):
        cov = coverage(flite_phones(sentences))
        speech_phones = {p for p in cov["phones"] if p != "pau"}
        report["flite"] = {
            "phonemes": len(speech_phones), "of": len(CMU_PHONES),
            "missing": sorted(set(CMU_PHONES) - speech_phones),
            "rarest": sorted((n, p) for p, n in cov["phones"].items() if p != "pau")[:5],
            "diphones": sum(1 for d in cov["diphones"] if "pau" not in d),
            "diphones_min3": sum(1 for d, n in cov["diphones"].items() if "pau" not in d and n >= 3),
            "diphones_possible": len(CMU_PHONES) ** 2,
        }
    if shutil.which("espeak-ng"):
        cov = coverage(espeak_phones(sentences))
        report["espeak-ng"] = {"phonemes": len(cov["phones"]), "diphones": len(cov["diphones"]),
                               "diphones_min3": sum(1 for n in cov["diphones"].values() if n >= 3)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="how many sentences (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--coverage", action="store_true",
                        help="print phoneme/diphone coverage (flite's CMU phones, espeak-ng's) instead of the sentences")
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="with --coverage: also text files (one sentence a line) to compare with")
    args = parser.parse_args()
    sentences = generate(args.n, args.seed)
    if not args.coverage:
        print("\n".join(sentences))
        return
    sets = {f"generated (n={args.n}, seed={args.seed})": sentences}
    for path in args.compare:
        lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        sets[f"{path} (n={len(lines)})"] = lines
    for name, texts in sets.items():
        words = [w for t in texts for w in sentence_key(t).split()]
        print(f"{name}: {len(words)} words, {len(set(words))} distinct")
        for engine, figures in coverage_report(texts).items():
            print(f"  {engine}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
