"""The built-in world: a seeded, procedurally generated toy world of people, towns, animals and objects.

Everything the default pipeline trains on is made from it by code, so nothing has to be downloaded. A `World`
holds people, towns, animals and objects whose attributes come from small, finite vocabularies (`vocab`; a
~5M-parameter model can learn them); its pretraining corpus (`World.documents`) is written by `corpus`, its
arithmetic by `arithmetic`. The names of those modules stay importable from here.

Later stages read the facts back as data (`World.facts`, `World.ATTRIBUTES`)
to write instruction, preference and reasoning data. Those stages only use
`World.trained_people`: the facts of `World.heldout_people` appear only in the
pretraining corpus, so answering questions about them measures whether
knowledge learned in pretraining can be extracted by instruction tuning.

Same `WorldConfig` -> same world and the same corpus, byte for byte.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fromzero.data.arithmetic import (
    CONTAINERS,
    GAINS,
    ITEMS,
    Equation,
    WordProblem,
    sample_equation,
    sample_word_problem,
)
from fromzero.data.corpus import (
    ANIMAL_TEMPLATES,
    BIO_TEMPLATES,
    DOC_KINDS,
    LLM_PASSAGES,
    OPENINGS,
    PLACE_TEMPLATES,
    THING_TEMPLATES,
    Document,
    biography,
    biography_sentences,
    write_corpus,
)
from fromzero.data.vocab import (
    ANIMAL_GROUPS,
    COLOURS,
    COUNTRY_SUFFIXES,
    FEMALE_NAMES,
    FOODS,
    HOBBIES,
    JOBS,
    KNOWN_FOR,
    LANDMARKS,
    LAST_NAMES,
    MALE_NAMES,
    N_COUNTRIES,
    NUMBER_WORDS,
    PET_NAMES,
    PRONOUNS,
    REGIONS,
    STRANGER_FEMALE_NAMES,
    STRANGER_LAST_NAMES,
    STRANGER_MALE_NAMES,
    TOWN_MIDDLES,
    TOWN_PREFIXES,
    TOWN_SUFFIXES,
)

__all__ = [
    # the world
    "ANIMALS",
    "ATTRIBUTES",
    "PET_KINDS",
    "THINGS",
    "Animal",
    "Person",
    "Place",
    "Thing",
    "World",
    "WorldConfig",
    "build_world",
    # re-exported from vocab
    "ANIMAL_GROUPS",
    "COLOURS",
    "COUNTRY_SUFFIXES",
    "FEMALE_NAMES",
    "FOODS",
    "HOBBIES",
    "JOBS",
    "KNOWN_FOR",
    "LANDMARKS",
    "LAST_NAMES",
    "MALE_NAMES",
    "N_COUNTRIES",
    "NUMBER_WORDS",
    "PET_NAMES",
    "PRONOUNS",
    "REGIONS",
    "STRANGER_FEMALE_NAMES",
    "STRANGER_LAST_NAMES",
    "STRANGER_MALE_NAMES",
    "TOWN_MIDDLES",
    "TOWN_PREFIXES",
    "TOWN_SUFFIXES",
    # re-exported from corpus
    "ANIMAL_TEMPLATES",
    "BIO_TEMPLATES",
    "DOC_KINDS",
    "LLM_PASSAGES",
    "OPENINGS",
    "PLACE_TEMPLATES",
    "THING_TEMPLATES",
    "Document",
    "biography",
    "biography_sentences",
    # re-exported from arithmetic
    "CONTAINERS",
    "GAINS",
    "ITEMS",
    "Equation",
    "WordProblem",
    "sample_equation",
    "sample_word_problem",
]


@dataclass(frozen=True)
class Animal:
    kind: str
    plural: str
    group: str  # a key of ANIMAL_GROUPS
    sound: str
    legs: int
    habitat: str  # a phrase that follows "lives": "in the forest"
    food: str


ANIMALS = tuple(
    Animal(*row)
    for row in (
        ("cat", "cats", "mammal", "meow", 4, "in people's homes", "fish"),
        ("dog", "dogs", "mammal", "woof", 4, "in people's homes", "meat"),
        ("rabbit", "rabbits", "mammal", "thump", 4, "in fields", "carrots"),
        ("hamster", "hamsters", "mammal", "squeak", 4, "in people's homes", "seeds"),
        ("parrot", "parrots", "bird", "squawk", 2, "in the jungle", "fruit"),
        ("goldfish", "goldfish", "fish", "blub", 0, "in ponds", "worms"),
        ("tortoise", "tortoises", "reptile", "hiss", 4, "in gardens", "leaves"),
        ("horse", "horses", "mammal", "neigh", 4, "on farms", "hay"),
        ("owl", "owls", "bird", "hoot", 2, "in the forest", "mice"),
        ("cow", "cows", "mammal", "moo", 4, "on farms", "grass"),
        ("sheep", "sheep", "mammal", "baa", 4, "on the hills", "grass"),
        ("pig", "pigs", "mammal", "oink", 4, "on farms", "apples"),
        ("duck", "ducks", "bird", "quack", 2, "on ponds", "weeds"),
        ("frog", "frogs", "amphibian", "croak", 4, "near ponds", "flies"),
        ("bee", "bees", "insect", "buzz", 6, "in meadows", "nectar"),
        ("wolf", "wolves", "mammal", "howl", 4, "in the forest", "meat"),
        ("fox", "foxes", "mammal", "yip", 4, "in the woods", "rabbits"),
        ("bear", "bears", "mammal", "growl", 4, "in the mountains", "berries and fish"),
        ("lion", "lions", "mammal", "roar", 4, "on the grassland", "meat"),
        ("crow", "crows", "bird", "caw", 2, "in the fields", "seeds"),
        ("hen", "hens", "bird", "cluck", 2, "on farms", "corn"),
        ("snake", "snakes", "reptile", "hiss", 0, "in the long grass", "eggs"),
    )
)
PET_KINDS = ("cat", "dog", "rabbit", "hamster", "parrot", "goldfish", "tortoise", "horse")


@dataclass(frozen=True)
class Thing:
    """An everyday object (not called Object, to leave the builtin alone)."""

    name: str
    plural: str
    colour: str
    material: str
    use: str  # a phrase that follows "used for": "boiling water"


THINGS = tuple(
    Thing(*row)
    for row in (
        ("cup", "cups", "white", "clay", "drinking tea"),
        ("kettle", "kettles", "grey", "metal", "boiling water"),
        ("chair", "chairs", "brown", "wood", "sitting"),
        ("lamp", "lamps", "yellow", "glass", "giving light"),
        ("hammer", "hammers", "grey", "iron", "hitting nails"),
        ("spoon", "spoons", "grey", "metal", "eating soup"),
        ("basket", "baskets", "brown", "straw", "carrying apples"),
        ("umbrella", "umbrellas", "black", "cloth", "staying dry in the rain"),
        ("candle", "candles", "white", "wax", "lighting a dark room"),
        ("rope", "ropes", "brown", "hemp", "tying things together"),
        ("bucket", "buckets", "blue", "tin", "carrying water"),
        ("kite", "kites", "red", "paper", "flying in the wind"),
        ("boot", "boots", "black", "leather", "walking in the mud"),
        ("broom", "brooms", "brown", "straw", "sweeping the floor"),
        ("bell", "bells", "yellow", "brass", "calling people"),
        ("clock", "clocks", "white", "wood", "telling the time"),
        ("needle", "needles", "grey", "steel", "sewing clothes"),
        ("pot", "pots", "black", "iron", "cooking stew"),
        ("ladder", "ladders", "brown", "wood", "climbing up high"),
        ("blanket", "blankets", "green", "wool", "keeping warm"),
        ("key", "keys", "yellow", "brass", "opening doors"),
        ("bowl", "bowls", "blue", "clay", "holding food"),
    )
)

# ---------------------------------------------------------------------------
# Config


class WorldConfig(BaseModel):
    """Size and seed of the built-in world. The defaults are the tiny laptop preset
    (about 4 MB of text, 1M tokens); presets set the fields directly, there is no scale knob."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed for the world and its corpus.")
    n_people: int = Field(
        400,
        ge=2,
        le=len(MALE_NAMES + FEMALE_NAMES) * len(LAST_NAMES),
        description="Number of people, each with a unique full name.",
    )
    n_places: int = Field(
        40,
        ge=2,
        le=len(TOWN_PREFIXES) * len(TOWN_MIDDLES) * len(TOWN_SUFFIXES),
        description="Number of invented towns (people's home towns are drawn from them).",
    )
    heldout_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Fraction of people whose facts appear only in the pretraining corpus."
    )
    bios_per_person: int = Field(12, ge=1, description="Paraphrased biographies per person (knowledge augmentation).")
    n_stories: int = Field(6000, ge=0, description="Short stories about people, pets and towns.")
    encyclopedia_per_entity: int = Field(
        16, ge=0, description="Paraphrased encyclopedia entries per town, animal and object."
    )
    n_arithmetic: int = Field(4000, ge=0, description="Arithmetic documents (a few statements or problems each).")
    max_number: int = Field(50, ge=10, description="Largest number (operand or result) in arithmetic.")
    n_llm_passages: int = Field(300, ge=0, description="Copies in total of the passages about language models.")
    n_new_people: int = Field(
        0,
        ge=0,
        description="People who appear nowhere in the corpus or the instruction data, one short biography "
        "each: the documents `fromzero run`'s synth stage writes its own instruction data from.",
    )
    n_stranger_docs: int = Field(
        0,
        ge=0,
        description="Documents about one-off people, two paraphrased biographies each: their facts are "
        "predicted only by reading them from earlier in the document, how a model learns to copy from a text.",
    )
    n_practice_people: int = Field(
        0,
        ge=0,
        description="People known from nowhere but the synth stage's practice conversations: on their "
        "biographies its question writer learns to ask what a sentence of a text says (so it reads names from the "
        "text, not from memory).",
    )


# ---------------------------------------------------------------------------
# People and places


@dataclass(frozen=True)
class Place:
    name: str
    country: str
    region: str  # which part of the country: "north", ...
    landmark: str  # what the town lies beside: "river", ...
    known_for: str  # plural noun: "apples"
    population: int


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str
    gender: str  # "male" or "female"
    age: int
    town: str  # a Place name
    job: str
    pet: str  # an Animal kind
    pet_name: str
    colour: str
    food: str
    hobby: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def he(self) -> str:
        return PRONOUNS[self.gender][0]

    @property
    def him(self) -> str:
        return PRONOUNS[self.gender][1]

    @property
    def his(self) -> str:
        return PRONOUNS[self.gender][2]


# Person attribute -> a description phrased to fit "What is {name}'s {description}?".
# Keys are Person field names; World.facts(p)[key] is the canonical answer string.
ATTRIBUTES: dict[str, str] = {
    "age": "age",
    "town": "home town",
    "job": "job",
    "pet": "pet",
    "pet_name": "pet's name",
    "colour": "favourite colour",
    "food": "favourite food",
    "hobby": "hobby",
}


@dataclass
class World:
    cfg: WorldConfig
    people: tuple[Person, ...]
    trained_people: tuple[Person, ...]
    heldout_people: tuple[Person, ...]
    places: tuple[Place, ...]
    animals: tuple[Animal, ...]
    objects: tuple[Thing, ...]
    new_people: tuple[Person, ...] = ()  # in no corpus or instruction data: what the synth stage learns about
    practice_people: tuple[Person, ...] = ()  # in the synth stage's practice conversations only
    corpus_strangers: tuple[Person, ...] = ()  # in one document of the corpus each

    ATTRIBUTES: ClassVar[dict[str, str]] = ATTRIBUTES

    def __post_init__(self) -> None:
        self._people = {p.name: p for p in self.people + self.new_people + self.practice_people + self.corpus_strangers}
        self._places = {p.name: p for p in self.places}
        self._animals = {a.kind: a for a in self.animals}

    def person(self, name: str) -> Person:
        return self._people[name]

    def place(self, name: str) -> Place:
        return self._places[name]

    def animal(self, kind: str) -> Animal:
        return self._animals[kind]

    def facts(self, person: Person) -> dict[str, str]:
        """Attribute -> canonical answer string, exactly as the corpus writes it."""
        return {attr: str(getattr(person, attr)) for attr in ATTRIBUTES}

    @cached_property
    def documents(self) -> tuple[Document, ...]:
        """The pretraining corpus with labels, in its (seeded, shuffled) order."""
        return write_corpus(self)

    def pretrain_documents(self) -> Iterator[str]:
        for doc in self.documents:
            yield doc.text

    def stats(self) -> dict[str, dict[str, int]]:
        """{kind: {"docs": n, "chars": n}} for each document kind, plus "total"."""
        out = {kind: {"docs": 0, "chars": 0} for kind in (*DOC_KINDS, "total")}
        for doc in self.documents:
            for key in (doc.kind, "total"):
                out[key]["docs"] += 1
                out[key]["chars"] += len(doc.text)
        return out

    def describe(self) -> str:
        s = self.stats()
        lines = [
            f"world seed={self.cfg.seed}: {len(self.people)} people "
            f"({len(self.heldout_people)} held out), {len(self.places)} towns, "
            f"{len(self.animals)} animals, {len(self.objects)} objects",
        ]
        for kind in (*DOC_KINDS, "total"):
            lines.append(f"  {kind:<12} {s[kind]['docs']:>7,} docs {s[kind]['chars'] / 1e6:>7.2f} MB")
        return "\n".join(lines)


def build_world(cfg: WorldConfig) -> World:
    # One stream per thing being drawn, so e.g. changing n_places leaves names alone.
    rng = random.Random(f"{cfg.seed}:places")
    places = _make_places(rng, cfg.n_places)

    rng = random.Random(f"{cfg.seed}:people")
    names = [
        (f, g, last)
        for g, firsts in (("male", MALE_NAMES), ("female", FEMALE_NAMES))
        for f in firsts
        for last in LAST_NAMES
    ]
    people = tuple(
        _make_person(rng, first, last, gender, places) for first, gender, last in rng.sample(names, cfg.n_people)
    )

    rng = random.Random(f"{cfg.seed}:split")
    heldout = set(rng.sample(range(len(people)), round(cfg.heldout_fraction * len(people))))
    # Everyone who is not one of the people has a stranger name, each name one person: from the corpus's strangers a
    # model learns to read such a name's facts from the text, as the practice and new people need (a name like the
    # people's would be recalled from memory instead).
    rng = random.Random(f"{cfg.seed}:strangers")
    others = [
        (f, g, last)
        for g, firsts in (("male", STRANGER_MALE_NAMES), ("female", STRANGER_FEMALE_NAMES))
        for f in firsts
        for last in STRANGER_LAST_NAMES
    ]
    wanted = cfg.n_stranger_docs + cfg.n_new_people + cfg.n_practice_people
    if wanted > len(others):
        raise ValueError(
            f"world: n_stranger_docs + n_new_people + n_practice_people = {wanted}, but the stranger "
            f"names make only {len(others)} people; lower one of them"
        )
    strangers = [_make_person(rng, first, last, gender, places) for first, gender, last in rng.sample(others, wanted)]
    known = strangers[cfg.n_stranger_docs :]
    return World(
        cfg=cfg,
        people=people,
        trained_people=tuple(p for i, p in enumerate(people) if i not in heldout),
        heldout_people=tuple(p for i, p in enumerate(people) if i in heldout),
        places=places,
        animals=ANIMALS,
        objects=THINGS,
        new_people=tuple(known[: cfg.n_new_people]),
        practice_people=tuple(known[cfg.n_new_people :]),
        corpus_strangers=tuple(strangers[: cfg.n_stranger_docs]),
    )


def _make_person(rng: random.Random, first: str, last: str, gender: str, places: tuple[Place, ...]) -> Person:
    return Person(
        first_name=first,
        last_name=last,
        gender=gender,
        age=rng.randint(20, 70),
        town=rng.choice(places).name,
        job=rng.choice(tuple(JOBS)),
        pet=rng.choice(PET_KINDS),
        pet_name=rng.choice(PET_NAMES),
        colour=rng.choice(COLOURS),
        food=rng.choice(FOODS),
        hobby=rng.choice(HOBBIES),
    )


def _make_places(rng: random.Random, n: int) -> tuple[Place, ...]:
    combos = list(product(TOWN_PREFIXES, TOWN_MIDDLES, TOWN_SUFFIXES))
    rng.shuffle(combos)
    names = list(dict.fromkeys("".join(c) for c in combos))[:n]
    countries = rng.sample([p + s for p in TOWN_PREFIXES for s in COUNTRY_SUFFIXES], N_COUNTRIES)
    return tuple(
        Place(
            name=name,
            country=rng.choice(countries),
            region=rng.choice(REGIONS),
            landmark=rng.choice(LANDMARKS),
            known_for=rng.choice(KNOWN_FOR),
            population=rng.randint(5, 500) * 100,
        )
        for name in names
    )


if __name__ == "__main__":
    t0 = time.perf_counter()
    w = build_world(WorldConfig())
    n = len(w.documents)
    print(f"{n} documents in {time.perf_counter() - t0:.2f} s")
    print(w.describe())
