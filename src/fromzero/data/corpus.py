"""The built-in world's pretraining corpus, written from its people, towns, animals and objects.

- biographies, several paraphrased ones per person, in the style of "Physics of Language Models 3.1"
  (bioS multi + permute): every bio states every attribute, with a random template per attribute, in a random
  order, so that a model can answer questions about people it never saw questions about;
- documents about one-off people (the strangers), two biographies each, whose facts are read from the text;
- short stories that use the people, their pets, towns and objects;
- encyclopedia entries about towns, animals and objects;
- arithmetic, as equations, in words and as small word problems;
- a few passages about what a language model is.

Every kind of document draws from its own seeded stream, so the same `WorldConfig` gives the same corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fromzero.data.arithmetic import sample_equation, sample_word_problem
from fromzero.data.vocab import ANIMAL_GROUPS, JOBS, NUMBER_WORDS, a, cap

if TYPE_CHECKING:
    from fromzero.data.world import Animal, Person, Place, Thing, World


@dataclass(frozen=True)
class Document:
    kind: str  # one of DOC_KINDS
    text: str
    subject: str | None = None  # the person or entity it is about, if any


DOC_KINDS = ("bio", "stranger", "story", "encyclopedia", "arithmetic", "llm")


def biography(p: Person, seed: int | str) -> str:
    """One short biography of a person, the same for the same seed (the corpus writes its own from one stream)."""
    return " ".join(s for _, s in biography_sentences(p, seed))


def biography_sentences(p: Person, seed: int | str) -> list[tuple[str, str]]:
    """`biography`'s sentences, each with the group of facts it states (age, town, job, pet, colour, food, hobby)."""
    return _bio_sentences(p, random.Random(f"{seed}:bio:{p.name}"))


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
        a_job=a(p.job),
        pet=p.pet,
        a_pet=a(p.pet),
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
            (group, template.format(S=cap(subject), s=subject, P=cap(possessive), p=possessive, own=p.his, **values))
        )
    return sentences


T = TypeVar("T")


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
        He=cap(p.he),
        him=p.him,
        his=p.his,
        His=cap(p.his),
        age=p.age,
        town=p.town,
        a_job=a(p.job),
        activity=JOBS[p.job],
        pet=p.pet,
        pet_name=p.pet_name,
        pet_food=pet.food,
        sound=pet.sound,
        Sound=cap(pet.sound),
        colour=p.colour,
        food=p.food,
        hobby=p.hobby,
        landmark=place.landmark,
        opening=rng.choice(OPENINGS),
        a_thing=a(rng.choice(world.objects).name),
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
        a_kind=a(animal.kind),
        A_kind=cap(a(animal.kind)),
        plural=animal.plural,
        Plural=cap(animal.plural),
        a_group=a(animal.group),
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
        a_name=a(thing.name),
        A_name=cap(a(thing.name)),
        plural=thing.plural,
        Plural=cap(thing.plural),
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


def write_corpus(world: World) -> tuple[Document, ...]:
    """The world's pretraining corpus (`World.documents`): every kind of document, shuffled."""
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
