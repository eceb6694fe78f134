"""The built-in world: a seeded, procedurally generated toy world and its corpus.

Everything the default pipeline trains on is made here by code, so nothing has
to be downloaded. A `World` holds people, towns, animals and objects whose
attributes come from small, finite vocabularies (a ~5M-parameter model can
learn them), and writes the pretraining corpus from them:

- biographies, several paraphrased ones per person, in the style of
  "Physics of Language Models 3.1" (bioS multi + permute): every bio states
  every attribute, with a random template per attribute, in a random order.
  Without this augmentation a model memorises bios but cannot answer questions
  about people it never saw questions about; with it, it can.
- short stories that use the people, their pets, towns and objects,
- encyclopedia entries about towns, animals and objects,
- arithmetic, as equations, in words and as small word problems,
- a few passages about what a language model is.

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
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------------------
# Vocabularies. Small and plain on purpose: each value must be seen often
# enough by a tiny model to be learned.

MALE_NAMES = (
    "Tom",
    "Sam",
    "Ben",
    "Leo",
    "Jack",
    "Noah",
    "Adam",
    "Owen",
    "Finn",
    "Hugo",
    "Theo",
    "Eli",
    "Jonah",
    "Luke",
    "Paul",
    "Ray",
    "Carl",
    "Dan",
    "Evan",
    "Felix",
    "Gus",
    "Henry",
    "Ivan",
    "Joel",
    "Kurt",
    "Liam",
    "Mark",
    "Neil",
    "Omar",
    "Pete",
    "Ross",
    "Seth",
    "Tim",
    "Victor",
    "Wes",
    "Zack",
    "Abe",
    "Bruno",
    "Colin",
    "Dean",
)
FEMALE_NAMES = (
    "Mara",
    "Anna",
    "Lucy",
    "Emma",
    "Nora",
    "Ruth",
    "Ada",
    "Beth",
    "Cara",
    "Dora",
    "Eva",
    "Fay",
    "Gwen",
    "Hana",
    "Iris",
    "Jane",
    "Kate",
    "Lena",
    "Mia",
    "Nina",
    "Olga",
    "Pam",
    "Rosa",
    "Sara",
    "Tess",
    "Una",
    "Vera",
    "Wendy",
    "Yara",
    "Zoe",
    "Alice",
    "Clara",
    "Ellen",
    "Grace",
    "Holly",
    "Ivy",
    "Joy",
    "Lily",
    "May",
    "Rita",
)
LAST_NAMES = (
    "Quill",
    "Hale",
    "Thorne",
    "Bell",
    "Frost",
    "Moss",
    "Vale",
    "Wren",
    "Finch",
    "Lark",
    "Reed",
    "Birch",
    "Clay",
    "Dale",
    "Ford",
    "Gale",
    "Hart",
    "Holt",
    "Kemp",
    "Lane",
    "Mead",
    "Nash",
    "Oakes",
    "Pike",
    "Rowe",
    "Shaw",
    "Tate",
    "Vance",
    "Webb",
    "Yates",
    "Cole",
    "Drake",
    "Fenn",
    "Glenn",
    "Hyde",
    "Knox",
    "Lowe",
    "Moore",
    "Page",
    "Quinn",
    "Rhodes",
    "Sharp",
    "Todd",
    "Wilde",
    "Booth",
    "Carr",
    "Dunn",
    "Eddy",
    "Flint",
    "Gage",
    "Hobbs",
    "Irwin",
    "Judd",
    "Keane",
    "Lyle",
    "Mills",
    "Noble",
    "Platt",
    "Royce",
    "Thorpe",
    "Abbot",
    "Baker",
    "Chase",
    "Dorn",
    "Ellis",
    "Fisher",
    "Grant",
    "Hill",
    "Ingram",
    "Jarvis",
    "Kirby",
    "Lloyd",
    "Mercer",
    "Nolan",
    "Oliver",
    "Parker",
    "Rand",
    "Sutton",
    "Tanner",
    "Upton",
    "Vaughn",
    "Walsh",
    "Archer",
    "Bishop",
    "Carver",
    "Dawson",
    "Emery",
    "Fowler",
    "Gray",
    "Hayes",
    "Jennings",
    "Kent",
    "Lister",
    "Marlow",
    "Norris",
    "Osborne",
    "Pruitt",
    "Rider",
    "Sloane",
    "Turner",
    "Wade",
    "Barlow",
    "Cooper",
    "Dixon",
    "Everett",
    "Foster",
    "Griffin",
    "Hunt",
    "Landry",
    "Milner",
)
# The one-off people (the corpus's strangers, the practice and the new people) have names of their own: sharing the
# people's names, 2000 stranger documents halved SFT's recall of the people's facts (a name no longer keyed one person).
STRANGER_MALE_NAMES = (
    "Arlo",
    "Basil",
    "Cyril",
    "Dexter",
    "Edgar",
    "Fabian",
    "Gideon",
    "Horace",
    "Jasper",
    "Lionel",
    "Magnus",
    "Nigel",
    "Oscar",
    "Percy",
    "Rupert",
    "Silas",
    "Tobias",
    "Ulric",
    "Wilbur",
    "Xavier",
)
STRANGER_FEMALE_NAMES = (
    "Agnes",
    "Beatrix",
    "Cecily",
    "Daphne",
    "Edith",
    "Flora",
    "Greta",
    "Hilda",
    "Imogen",
    "Juno",
    "Leonie",
    "Mabel",
    "Nell",
    "Opal",
    "Petra",
    "Queenie",
    "Selma",
    "Thea",
    "Ursula",
    "Wilma",
)
STRANGER_LAST_NAMES = (
    "Ashdown",
    "Blackwood",
    "Crabtree",
    "Duckett",
    "Fairweather",
    "Goodbody",
    "Hornblower",
    "Kettle",
    "Larkspur",
    "Merriweather",
    "Nettleton",
    "Pennywhistle",
    "Quickley",
    "Rookwood",
    "Sandford",
    "Thistlewood",
    "Underhill",
    "Wetherby",
    "Yarrow",
    "Zouch",
    "Bramble",
    "Cobb",
    "Dimmock",
    "Farthing",
    "Gosling",
    "Hitchens",
    "Inkpen",
    "Jolley",
    "Lovelock",
    "Mudge",
    "Ambler",
    "Pickering",
    "Quimby",
    "Ravenscroft",
    "Sedgwick",
    "Tolliver",
    "Upjohn",
    "Vosper",
    "Whitlock",
    "Yelland",
)
# Disjoint from the first names, so "Pepper" is always a pet and never a person.
PET_NAMES = (
    "Biscuit",
    "Pepper",
    "Luna",
    "Coco",
    "Milo",
    "Rocky",
    "Ginger",
    "Shadow",
    "Pip",
    "Mochi",
    "Button",
    "Toffee",
    "Ziggy",
    "Nutmeg",
    "Pickles",
    "Waffles",
    "Bramble",
    "Socks",
    "Clover",
    "Sunny",
    "Muffin",
    "Olive",
    "Bean",
    "Rusty",
    "Bubbles",
    "Patch",
    "Fudge",
    "Noodle",
    "Pebble",
    "Snowy",
    "Spot",
    "Whiskers",
    "Tango",
    "Peanut",
    "Jelly",
    "Sparky",
    "Dot",
    "Maple",
    "Acorn",
    "Pudding",
)
COLOURS = (
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "pink",
    "white",
    "black",
    "brown",
    "grey",
)
FOODS = (
    "pizza",
    "soup",
    "apple pie",
    "rice",
    "noodles",
    "cheese",
    "pancakes",
    "fish",
    "carrots",
    "chocolate",
    "honey cake",
    "salad",
    "eggs",
    "curry",
    "strawberries",
    "plums",
    "potatoes",
)
HOBBIES = (
    "painting",
    "fishing",
    "reading",
    "gardening",
    "singing",
    "dancing",
    "swimming",
    "cooking",
    "knitting",
    "running",
    "playing chess",
    "playing the piano",
    "climbing",
    "cycling",
    "bird watching",
    "drawing",
    "camping",
)
# job -> what a person with that job does every day (used by stories).
JOBS = {
    "baker": "bakes bread for the town",
    "teacher": "teaches the children to read and write",
    "farmer": "feeds the cows and the sheep",
    "doctor": "helps people who are sick",
    "nurse": "takes care of sick people",
    "sailor": "sails a boat on the water",
    "builder": "builds houses and walls",
    "carpenter": "makes tables and chairs",
    "tailor": "sews coats and dresses",
    "librarian": "looks after the books in the library",
    "cook": "cooks food for many people",
    "gardener": "plants flowers and trees",
    "potter": "makes cups and bowls from clay",
    "painter": "paints pictures of the hills",
    "vet": "looks after sick animals",
    "shopkeeper": "sells things in a small shop",
    "pilot": "flies a small plane",
    "engineer": "builds bridges and machines",
}

# Invented town names: prefix + middle + suffix ("Brin" + "dle" + "moor").
# The middle syllable keeps them from being real place names.
TOWN_PREFIXES = (
    "Brin",
    "Ash",
    "Thorn",
    "Mel",
    "Cal",
    "Dun",
    "Fen",
    "Gal",
    "Hol",
    "Kes",
    "Lor",
    "Mar",
    "Nor",
    "Pel",
    "Quen",
    "Ros",
    "Sel",
    "Tam",
    "Vel",
    "Wyn",
    "Bar",
    "Cor",
    "El",
    "Har",
)
TOWN_MIDDLES = ("dle", "a", "e", "i", "o", "ri", "ven", "wen", "ling", "ber")
TOWN_SUFFIXES = (
    "moor",
    "ford",
    "wick",
    "stead",
    "holm",
    "by",
    "dale",
    "mere",
    "haven",
    "ton",
    "bury",
    "field",
    "wood",
    "brook",
)
COUNTRY_SUFFIXES = ("land", "mark", "ia", "ova")
N_COUNTRIES = 4
REGIONS = ("north", "south", "east", "west")
LANDMARKS = ("river", "lake", "hill", "forest", "mountain", "marsh", "waterfall", "bay")
KNOWN_FOR = (
    "apples",
    "cheese",
    "bridges",
    "boats",
    "bells",
    "wool",
    "bread",
    "roses",
    "kites",
    "honey",
    "pottery",
    "clocks",
    "lanterns",
    "festivals",
    "gardens",
)
ANIMAL_GROUPS = {  # singular -> plural
    "mammal": "mammals",
    "bird": "birds",
    "fish": "fish",
    "reptile": "reptiles",
    "amphibian": "amphibians",
    "insect": "insects",
}
NUMBER_WORDS = {0: "no", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


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


# Every person is "he" or "she": with "they" every template would need a second
# verb form, which costs a tiny model more than it teaches.
PRONOUNS = {"male": ("he", "him", "his"), "female": ("she", "her", "her")}


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


@dataclass(frozen=True)
class Document:
    kind: str  # one of DOC_KINDS
    text: str
    subject: str | None = None  # the person or entity it is about, if any


DOC_KINDS = ("bio", "stranger", "story", "encyclopedia", "arithmetic", "llm")


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
        return _write_corpus(self)

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
    # Everyone who is not one of the people has a name of the stranger pools, each name one person: the corpus's
    # strangers teach the model to read such a name's facts from the text, which the practice and the new people
    # need (a name of the people's pools is recalled: the pretrained model wrote "Nora Thorne" for "Nora Tanner").
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


def biography(p: Person, seed: int | str) -> str:
    """One short biography of a person, the same for the same seed (the corpus writes its own from one stream)."""
    return " ".join(s for _, s in biography_sentences(p, seed))


def biography_sentences(p: Person, seed: int | str) -> list[tuple[str, str]]:
    """`biography`'s sentences, each with the group of facts it states (age, town, job, pet, colour, food, hobby)."""
    return _bio_sentences(p, random.Random(f"{seed}:bio:{p.name}"))


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


# ---------------------------------------------------------------------------
# Arithmetic, shared with the reasoning stage so both use the same distribution.


@dataclass(frozen=True)
class Equation:
    a: int
    op: str  # "+", "-" or "*"
    b: int
    result: int

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"

    def prose(self, rng: random.Random) -> str:
        word = {"+": "plus", "-": "minus", "*": "times"}[self.op]
        return f"{self.a} {word} {self.b} {rng.choice(('is', 'equals'))} {self.result}."


def sample_equation(rng: random.Random, max_number: int, op: str | None = None) -> Equation:
    """A correct equation whose numbers all lie in [1, max_number]."""
    op = op or rng.choice("+-*")
    if op == "+":
        c = rng.randint(2, max_number)
        a = rng.randint(1, c - 1)
        return Equation(a, "+", c - a, c)
    if op == "-":
        a = rng.randint(2, max_number)
        b = rng.randint(1, a - 1)
        return Equation(a, "-", b, a - b)
    # Small multiplications only: factors up to 10.
    a = rng.randint(2, min(10, max_number // 2))
    b = rng.randint(2, min(10, max_number // a))
    return Equation(a, "*", b, a * b)


@dataclass(frozen=True)
class WordProblem:
    statement: str  # the story told as a fact, answer included (pretraining prose)
    question: str  # the same story ending in a question
    steps: tuple[Equation, ...]  # the worked solution, one equation per step
    answer: int

    @property
    def solution(self) -> str:
        return " ".join(f"{s}." for s in self.steps) + f" The answer is {self.answer}."


ITEMS = (
    ("apple", "apples"),
    ("egg", "eggs"),
    ("marble", "marbles"),
    ("book", "books"),
    ("coin", "coins"),
    ("shell", "shells"),
    ("stamp", "stamps"),
    ("pencil", "pencils"),
    ("cookie", "cookies"),
    ("flower", "flowers"),
    ("cherry", "cherries"),
    ("sticker", "stickers"),
)
CONTAINERS = (("bag", "bags"), ("box", "boxes"), ("basket", "baskets"))
GAINS = ("bought", "found", "was given")


def sample_word_problem(rng: random.Random, max_number: int) -> WordProblem:
    gender = rng.choice(("male", "female"))
    name = rng.choice(MALE_NAMES if gender == "male" else FEMALE_NAMES)
    he = PRONOUNS[gender][0]
    item, items = rng.choice(ITEMS)

    def n(k: int) -> str:
        return f"{k} {item if k == 1 else items}"

    kind = rng.choice(("add", "sub", "mul", "two"))
    if kind == "add":
        e = sample_equation(rng, max_number, "+")
        verb = rng.choice(GAINS)
        return WordProblem(
            f"{name} had {n(e.a)} and {verb} {e.b} more, so {he} had {n(e.result)}.",
            f"{name} had {n(e.a)}. Then {he} {verb} {e.b} more. How many {items} does {name} have now?",
            (e,),
            e.result,
        )
    if kind == "sub":
        e = sample_equation(rng, max_number, "-")
        return WordProblem(
            f"{name} had {n(e.a)} and gave {e.b} to a friend, so {he} had {n(e.result)} left.",
            f"{name} had {n(e.a)}. Then {he} gave {e.b} to a friend. How many {items} does {name} have left?",
            (e,),
            e.result,
        )
    if kind == "mul":
        e = sample_equation(rng, max_number, "*")
        box, boxes = rng.choice(CONTAINERS)
        setup = f"{name} has {e.a} {boxes} with {n(e.b)} in each {box}"
        return WordProblem(
            f"{setup}, so {he} has {n(e.result)} in all.",
            f"{setup}. How many {items} does {name} have in all?",
            (e,),
            e.result,
        )
    first = sample_equation(rng, max_number, "+")
    given = rng.randint(1, first.result - 1)
    second = Equation(first.result, "-", given, first.result - given)
    verb = rng.choice(GAINS)
    return WordProblem(
        f"{name} had {n(first.a)}, {verb} {first.b} more and then gave {second.b} away, "
        f"so {he} had {n(second.result)} at the end.",
        f"{name} had {n(first.a)}. Then {he} {verb} {first.b} more and gave {second.b} away. "
        f"How many {items} does {name} have now?",
        (first, second),
        second.result,
    )


# ---------------------------------------------------------------------------
# Corpus writing

T = TypeVar("T")


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# One entry per sentence of a bio: templates that state the same fact. {S}/{s}
# is the subject at the start / in the middle of a sentence, {P}/{p} its
# possessive; each is the full name or a pronoun. {own} is always the possessive
# pronoun, for a second mention. The pet sentence states two attributes (pet
# and pet_name), which belong together.
BIO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "age": (
        "{S} is {age} years old.",
        "{S} turned {age} this year.",
        "{P} age is {age}.",
        "{S} has lived for {age} years.",
        "At the moment, {s} is {age} years old.",
    ),
    "town": (
        "{S} lives in {town}.",
        "{S} comes from the town of {town}.",
        "{P} home town is {town}.",
        "{S} grew up in {town} and still lives there.",
        "The town of {town} is where {s} lives.",
    ),
    "job": (
        "{S} works as {a_job}.",
        "{S} is {a_job}.",
        "{S} has a job as {a_job}.",
        "{S} earns a living as {a_job}.",
        "By trade, {s} is {a_job}.",
    ),
    "pet": (
        "{S} has {a_pet} named {pet_name}.",
        "{S} owns a pet {pet} called {pet_name}.",
        "{P} pet is {a_pet} called {pet_name}.",
        "{S} lives with {a_pet} whose name is {pet_name}.",
        "{S} looks after a pet {pet}, and its name is {pet_name}.",
    ),
    "colour": (
        "{P} favourite colour is {colour}.",
        "{S} likes the colour {colour} best.",
        "{S} loves the colour {colour} more than any other.",
        "Of all the colours, {s} likes {colour} most.",
        "The colour that {s} likes best is {colour}.",
    ),
    "food": (
        "{P} favourite food is {food}.",
        "{S} loves to eat {food}.",
        "{S} likes {food} more than any other food.",
        "If {s} could eat one thing every day, it would be {food}.",
        "The food that {s} likes best is {food}.",
    ),
    "hobby": (
        "{P} hobby is {hobby}.",
        "{S} enjoys {hobby} in {own} free time.",
        "{S} spends the weekends {hobby}.",
        "{S} is very fond of {hobby}.",
        "For fun, {s} likes {hobby}.",
    ),
}


def _biography(p: Person, rng: random.Random) -> str:
    return " ".join(s for _, s in _bio_sentences(p, rng))


def _bio_sentences(p: Person, rng: random.Random) -> list[tuple[str, str]]:
    values = dict(
        age=p.age,
        town=p.town,
        a_job=_a(p.job),
        pet=p.pet,
        a_pet=_a(p.pet),
        pet_name=p.pet_name,
        colour=p.colour,
        food=p.food,
        hobby=p.hobby,
    )
    groups = list(BIO_TEMPLATES)
    rng.shuffle(groups)
    sentences = []
    for i, group in enumerate(groups):
        # The first sentence introduces the full name; later ones mix name and pronoun.
        subject, possessive = (p.name, f"{p.name}'s") if i == 0 or rng.random() < 0.5 else (p.he, p.his)
        template = rng.choice(BIO_TEMPLATES[group])
        sentences.append(
            (group, template.format(S=_cap(subject), s=subject, P=_cap(possessive), p=possessive, own=p.his, **values))
        )
    return sentences


def _other(rng: random.Random, items: tuple[T, ...], exclude: T) -> T:
    """A random item that is not `exclude` (items has at least two)."""
    while (item := rng.choice(items)) == exclude:
        pass
    return item


OPENINGS = (
    "One sunny morning",
    "On a rainy afternoon",
    "Last Sunday",
    "Early one morning",
    "One cold winter evening",
    "On a warm summer day",
    "One quiet evening",
    "On a windy day",
)


def _story(world: World, rng: random.Random) -> Document:
    p = rng.choice(world.people)
    place = world.place(p.town)
    pet = world.animal(p.pet)
    v = dict(
        name=p.name,
        he=p.he,
        He=_cap(p.he),
        him=p.him,
        his=p.his,
        His=_cap(p.his),
        age=p.age,
        town=p.town,
        a_job=_a(p.job),
        activity=JOBS[p.job],
        pet=p.pet,
        pet_name=p.pet_name,
        pet_food=pet.food,
        sound=pet.sound,
        Sound=_cap(pet.sound),
        colour=p.colour,
        food=p.food,
        hobby=p.hobby,
        landmark=place.landmark,
        opening=rng.choice(OPENINGS),
        a_thing=_a(rng.choice(world.objects).name),
    )
    kind = rng.randrange(7)
    if kind == 0:
        text = (
            "{opening}, {name} was at home in {town} with {his} {pet}, {pet_name}. "
            '{pet_name} said "{sound}" because it was hungry. {He} gave {pet_name} '
            "some {pet_food}, and the {pet} was happy again."
        )
    elif kind == 1:
        text = (
            "{name} is {a_job} in {town}. Every day {he} {activity}. Today was a busy "
            "day, and by noon {he} was very hungry, so {he} had some {food}, {his} "
            "favourite food. After work {he} went home to {his} {pet}, {pet_name}."
        )
    elif kind == 2:
        text = (
            "{opening}, {name} did not have to work. {He} spent the whole day {hobby}. "
            "{His} {pet} {pet_name} stayed close by. In the evening {he} said, "
            '"I love {hobby} more than anything!"'
        )
    elif kind == 3:
        text = (
            "{opening}, {name} could not find {his} {pet}, {pet_name}. {He} looked all "
            "over {town}. At last {he} found {pet_name} near the {landmark}, hiding "
            'behind {a_thing}. "{Sound}!" said {pet_name}, and {name} laughed and '
            "took the {pet} home."
        )
    elif kind == 4:
        text = (
            "Today {name} turned {age}. {His} friends in {town} came with {colour} "
            "balloons, because they know that {colour} is {his} favourite colour. They "
            "ate {food} together, and {pet_name} the {pet} got some {pet_food} too."
        )
    elif kind == 5:
        other = _other(rng, world.places, place)
        v.update(
            other=other.name,
            region=other.region,
            country=other.country,
            known_for=other.known_for,
            days=NUMBER_WORDS[rng.choice((2, 3, 4, 5))],
        )
        text = (
            "{opening}, {name} left {his} home in {town} to visit {other}. {other} is a "
            "town in the {region} of {country}, and it is famous for its {known_for}. "
            "{He} stayed there for {days} days. While {he} was away, a friend looked "
            "after {his} {pet}, {pet_name}. When {he} came back to {town}, {pet_name} "
            "was very glad to see {him}."
        )
    else:
        friend = _other(rng, world.people, p)
        v.update(
            friend=friend.name, friend_town=friend.town, friend_food=friend.food, thing=rng.choice(world.objects).name
        )
        text = (
            "{name} and {friend} are good friends. {opening}, {name} went to see "
            "{friend} in {friend_town} and brought a {colour} {thing} as a gift, because "
            "{colour} is {his} favourite colour. {friend} was very happy. Together they "
            "ate {friend_food}, which is {friend}'s favourite food, and talked until dark."
        )
    return Document("story", text.format(**v), p.name)


def _entry(rng: random.Random, templates: tuple[tuple[str, ...], ...], values: dict[str, object]) -> str:
    """One encyclopedia entry: a sentence from the first template group says what
    the entity is, then one from each other group, in a random order."""
    rest = list(templates[1:])
    rng.shuffle(rest)
    return " ".join(rng.choice(group).format(**values) for group in (templates[0], *rest))


PLACE_TEMPLATES = (
    (
        "{name} is a town in the {region} of {country}.",
        "{name} lies in the {region} of {country}.",
        "In the {region} of {country} there is a town called {name}.",
        "The town of {name} is in the {region} of {country}.",
    ),
    (
        "{name} sits beside a {landmark}.",
        "There is a {landmark} near {name}.",
        "The town of {name} was built next to a {landmark}.",
        "Close to {name} you can see a {landmark}.",
    ),
    (
        "{name} is famous for its {known_for}.",
        "People know {name} for its {known_for}.",
        "The people of {name} are proud of their {known_for}.",
        "Visitors come to {name} for its {known_for}.",
    ),
    (
        "{population} people live in {name}.",
        "{name} has a population of {population}.",
        "The town of {name} is home to {population} people.",
        "There are {population} people in {name}.",
    ),
)
ANIMAL_TEMPLATES = (
    (
        "The {kind} is {a_group} that lives {habitat}.",
        "{A_kind} is {a_group}. {Plural} live {habitat}.",
        "{Plural} are {groups}, and they live {habitat}.",
        "The {kind} is {a_group}, and you can find {plural} {habitat}.",
    ),
    (
        "{A_kind} has {legs} legs.",
        "{Plural} have {legs} legs.",
        "Every {kind} has {legs} legs.",
        "The body of {a_kind} has {legs} legs.",
    ),
    (
        "{A_kind} eats {food}.",
        "{Plural} eat {food}.",
        "The {kind} likes to eat {food}.",
        "{Plural} like to eat {food}.",
    ),
    (
        "{A_kind} says {sound}.",
        "{Plural} say {sound}.",
        "The sound of the {kind} is {sound}.",
        "When {a_kind} talks, it says {sound}.",
    ),
)
THING_TEMPLATES = (
    (
        "{A_name} is used for {use}.",
        "People use {a_name} for {use}.",
        "{Plural} are good for {use}.",
        "You need {a_name} for {use}.",
    ),
    (
        "{A_name} is made of {material}.",
        "Most {plural} are made of {material}.",
        "{Plural} are made from {material}.",
        "The {name} is a thing made of {material}.",
    ),
    (
        "{A_name} is often {colour}.",
        "Most {plural} are {colour}.",
        "Many {plural} are {colour}.",
        "The usual colour of {a_name} is {colour}.",
    ),
)


def _place_entry(place: Place, rng: random.Random) -> Document:
    values = dict(
        name=place.name,
        region=place.region,
        country=place.country,
        landmark=place.landmark,
        known_for=place.known_for,
        population=place.population,
    )
    text = _entry(rng, PLACE_TEMPLATES, values)
    return Document("encyclopedia", text, place.name)


def _animal_entry(animal: Animal, rng: random.Random) -> Document:
    values = dict(
        kind=animal.kind,
        a_kind=_a(animal.kind),
        A_kind=_cap(_a(animal.kind)),
        plural=animal.plural,
        Plural=_cap(animal.plural),
        a_group=_a(animal.group),
        groups=ANIMAL_GROUPS[animal.group],
        habitat=animal.habitat,
        legs=NUMBER_WORDS[animal.legs],
        food=animal.food,
        sound=animal.sound,
    )
    text = _entry(rng, ANIMAL_TEMPLATES, values)
    return Document("encyclopedia", text, animal.kind)


def _thing_entry(thing: Thing, rng: random.Random) -> Document:
    values = dict(
        name=thing.name,
        a_name=_a(thing.name),
        A_name=_cap(_a(thing.name)),
        plural=thing.plural,
        Plural=_cap(thing.plural),
        colour=thing.colour,
        material=thing.material,
        use=thing.use,
    )
    text = _entry(rng, THING_TEMPLATES, values)
    return Document("encyclopedia", text, thing.name)


def _arithmetic(rng: random.Random, max_number: int) -> Document:
    """A few lines, each an equation, an equation in words, or a word problem
    (told as a fact, or asked and solved step by step)."""
    lines = []
    for _ in range(rng.randint(3, 8)):
        style = rng.random()
        if style < 0.3:
            lines.append(str(sample_equation(rng, max_number)))
        elif style < 0.5:
            lines.append(sample_equation(rng, max_number).prose(rng))
        elif style < 0.8:
            lines.append(sample_word_problem(rng, max_number).statement)
        else:
            problem = sample_word_problem(rng, max_number)
            lines.append(f"{problem.question} {problem.solution}")
    return Document("arithmetic", "\n".join(lines))


LLM_PASSAGES = (
    "A language model is a program that predicts the next word in a text. It reads the "
    "words that came before and guesses which word comes next. A large language model, or "
    "LLM, is a language model with many parameters that was trained on a lot of text. The "
    "parameters are numbers that the model learns during training. By learning to predict "
    "the next word, the model learns grammar, facts about the world and a little reasoning.",
    "How does a language model learn? First it is pretrained: it reads a large amount of "
    "text and learns to predict the next token. A token is a small piece of text, like a "
    "word or a part of a word. After pretraining, the model can continue a text, but it "
    "does not yet know how to answer questions. Then it is fine-tuned on examples of "
    "questions and answers, so that it learns to act like a helpful assistant.",
    "An assistant is a language model that has been trained to answer questions and follow "
    "instructions. To make one, people start with a pretrained model and show it many "
    "conversations between a user and an assistant. This step is called supervised "
    "fine-tuning, or SFT. Later the model can learn from preferences: for a question it "
    "sees a good answer and a worse answer, and it learns to prefer the good one.",
    "A language model does not look things up. Everything it knows was learned from the "
    "text it read during training, and it is stored in its parameters. When it answers a "
    "question, it writes one token at a time. Sometimes a language model makes mistakes and "
    'says things that are not true. A good assistant says "I don\'t know" when it does not '
    "know the answer.",
    "Language models can also learn to reason. When a model solves a problem step by step, "
    "for example 7 + 5 = 12 and then 12 - 3 = 9, it is more likely to get the right answer. "
    "With reinforcement learning, the model tries many answers, gets a reward when an "
    "answer is correct, and slowly learns to reason better.",
    "A small language model has few parameters and can be trained on a laptop in minutes. "
    "A large language model has billions of parameters and is trained on many computers "
    "for weeks. Both work in the same way: they turn text into tokens, read the tokens, and "
    "predict the next token. A bigger model trained on more text usually knows more and "
    "writes better.",
)


def _write_corpus(world: World) -> tuple[Document, ...]:
    cfg = world.cfg

    def stream(name: str) -> random.Random:
        return random.Random(f"{cfg.seed}:{name}")

    docs: list[Document] = []
    rng = stream("bios")
    for p in world.people:
        bios: set[str] = set()
        while len(bios) < cfg.bios_per_person:  # paraphrases must differ
            bio = _biography(p, rng)
            if bio not in bios:
                bios.add(bio)
                docs.append(Document("bio", bio, p.name))

    rng = stream("strangers")
    docs += [
        Document("stranger", _biography(p, rng) + " " + _biography(p, rng), p.name) for p in world.corpus_strangers
    ]

    rng = stream("stories")
    docs += [_story(world, rng) for _ in range(cfg.n_stories)]

    rng = stream("encyclopedia")
    for _ in range(cfg.encyclopedia_per_entity):
        docs += [_place_entry(x, rng) for x in world.places]
        docs += [_animal_entry(x, rng) for x in world.animals]
        docs += [_thing_entry(x, rng) for x in world.objects]

    rng = stream("arithmetic")
    docs += [_arithmetic(rng, cfg.max_number) for _ in range(cfg.n_arithmetic)]

    docs += [Document("llm", LLM_PASSAGES[i % len(LLM_PASSAGES)]) for i in range(cfg.n_llm_passages)]

    stream("shuffle").shuffle(docs)
    return tuple(docs)


if __name__ == "__main__":
    t0 = time.perf_counter()
    w = build_world(WorldConfig())
    n = len(w.documents)
    print(f"{n} documents in {time.perf_counter() - t0:.2f} s")
    print(w.describe())
