"""Generates the shipped demo corpus (`corpus/train.txt`, `corpus/eval.txt`).

  python -m tools.corpus_gen            # rewrite the two files
  python -m tools.corpus_gen --check    # exit 1 if they differ

All text is original and public domain: the essays of `corpus_essays.py` plus
procedurally generated English documents from seeded templates (letters,
recipes, naturalist's field notes, dialogues, village records, fables and
multi-day travel journals). Journals and fables are long (several thousand
bytes) and refer back to names, places and running totals introduced far
earlier, so a long-context model has something to gain; letters, recipes and
dialogues are short, so the upsampling recipe has something to drop.

Documents are separated by `config.CORPUS_SEPARATOR`. The output depends only on
the seeds below (Python's `random.Random` is stable across 3.11 / 3.12).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from longgen_jax.data.config import CORPUS_DIR, CORPUS_SEPARATOR
from tools.corpus_essays import ESSAYS, EVAL_ESSAYS

TRAIN_SEED, EVAL_SEED = 20241002, 20250124
TRAIN_BYTES, EVAL_BYTES = 215_000, 24_000

FIRST = ("Ada", "Bram", "Clara", "Dorian", "Edith", "Felix", "Greta", "Hugo", "Iris", "Jonah", "Katya", "Lionel",
         "Mabel", "Nils", "Olive", "Pavel", "Quentin", "Rosa", "Silas", "Tilda", "Ulric", "Vera", "Walter", "Yara",
         "Agnes", "Bertram", "Cora", "Desmond", "Elsie", "Frederick", "Hattie", "Ivo", "June", "Lars", "Maude", "Otto")
LAST = ("Ashdown", "Birch", "Carver", "Dunmore", "Ellery", "Fairweather", "Gale", "Holloway", "Ingram", "Jessop",
        "Kettle", "Lowther", "Marsh", "Nettleton", "Oakes", "Pennock", "Quill", "Radley", "Stroud", "Thorne", "Underhill",
        "Vane", "Whitlock", "Yeoman")
TOWNS = ("Harrowby", "Elmsford", "Kettlewick", "Bramblecombe", "Oxley Cross", "Saltmarsh", "Fenwick", "Larkhill",
         "Thistleby", "Wyncombe", "Ashby Reach", "Cold Norton", "Millbrook", "Stonegate", "Wrenfield", "Hollins",
         "Dunmere", "Greyhaven", "Pikestone", "Orchard End")
RIVERS = ("the Wend", "the Ash", "the Little Oxe", "the Dowl", "the Marrow", "the Tarn", "the Silverbeck", "the Lune")
HILLS = ("Beacon Hill", "the Long Ridge", "Crowtop", "High Fell", "the Downs", "Hare Knoll", "Windy Edge")
TRADES = ("miller", "weaver", "blacksmith", "carpenter", "schoolteacher", "shepherd", "baker", "ferryman", "potter",
          "clockmaker", "innkeeper", "carter", "beekeeper", "saddler", "cooper", "thatcher")
BIRDS = ("wren", "blackbird", "curlew", "heron", "kestrel", "lapwing", "song thrush", "goldfinch", "barn owl",
         "skylark", "chiffchaff", "dipper", "kingfisher", "rook", "swallow", "yellowhammer")
TREES = ("oak", "ash", "hawthorn", "alder", "willow", "beech", "rowan", "hazel", "birch", "holly", "elder")
FLOWERS = ("primroses", "bluebells", "cowslips", "foxgloves", "meadowsweet", "knapweed", "campion", "yarrow",
           "wood anemones", "celandines", "ox-eye daisies", "harebells")
ANIMALS = ("hare", "roe deer", "badger", "fox", "stoat", "otter", "hedgehog", "field vole", "water vole", "weasel")
WEATHER = ("a thin rain that came and went", "bright sun and a cold wind from the north", "low cloud over the hills",
           "heavy showers in the afternoon", "a still, grey morning", "sharp frost at dawn", "warm air from the south",
           "mist in the valley until noon", "clear skies and a light breeze", "a gale that rattled the windows")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
SEASON = {m: s for s, ms in (("winter", (11, 0, 1)), ("spring", (2, 3, 4)), ("summer", (5, 6, 7)),
                             ("autumn", (8, 9, 10))) for m in ms}
OBJECTS = ("a brass compass", "a silver thimble", "a green glass bottle", "an old key", "a carved wooden bird",
           "a bundle of letters", "a map of the coast", "a copper kettle", "a lantern with a cracked pane",
           "a book of songs", "a pocket watch", "a blue scarf")
GOODS = ("barley", "wool", "cheese", "apples", "salt", "timber", "cider", "candles", "flour", "honey", "nails", "rope")
NUM_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def num(n: int) -> str:
  """Small numbers as words, larger ones as digits (as a careful writer would)."""
  return NUM_WORDS[n] if 0 <= n < len(NUM_WORDS) else str(n)


def cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def person(r: random.Random) -> str:
  return f"{r.choice(FIRST)} {r.choice(LAST)}"


def wrap_paragraphs(paragraphs) -> str:
  return "\n\n".join(p.strip() for p in paragraphs if p.strip())


# ----------------------------------------------------------------------------- letters


def letter(r: random.Random) -> str:
  writer, reader = r.choice(FIRST), r.choice(FIRST)
  town, month = r.choice(TOWNS), r.randrange(12)
  news = [
      f"The weather here has been {r.choice(WEATHER)}, which is about what we expect in {MONTHS[month]}.",
      f"Your cousin {r.choice(FIRST)} has taken work with the {r.choice(TRADES)} at {r.choice(TOWNS)} and seems "
      f"happy enough, though the walk there is long.",
      f"We sold {num(r.randint(3, 12))} sacks of {r.choice(GOODS)} at the market on Saturday and got a fair price "
      f"for them.",
      f"The {r.choice(TREES)} by the gate came down in the last storm, and it took three of us a whole day to clear "
      f"the lane.",
      f"I heard the first {r.choice(BIRDS)} of the year this morning, down by {r.choice(RIVERS)}.",
      f"Old {r.choice(LAST)} the {r.choice(TRADES)} has finally retired, and the village does not quite know what "
      f"to do without him.",
      f"The school has a new teacher, a young woman from {r.choice(TOWNS)}, and the children say she is strict but "
      f"fair.",
  ]
  asks = [
      f"Could you send word of when you expect to travel? We would like to have the spare room ready.",
      f"If you pass through {r.choice(TOWNS)}, would you look for {r.choice(OBJECTS)} for me? Mine was lost in the "
      f"move.",
      f"Please tell your mother that the recipe she sent worked very well, though I used less sugar.",
      f"Write soon and tell me everything, even the dull parts. The dull parts are what I miss.",
  ]
  closing = r.choice(("With warm regards", "Your loving friend", "Ever yours", "Yours faithfully", "With love"))
  body = r.sample(news, r.randint(2, 4))
  paragraphs = [f"{town}, {r.randint(1, 28)} {MONTHS[month]}", f"Dear {reader},",
                f"Thank you for your last letter, which arrived {r.choice(('on Tuesday', 'yesterday', 'last week'))}."
                f" {' '.join(body[:2])}"]
  if len(body) > 2:
    paragraphs.append(" ".join(body[2:]))
  paragraphs.append(r.choice(asks))
  paragraphs.append(f"{closing},\n{writer}")
  return wrap_paragraphs(paragraphs)


# ----------------------------------------------------------------------------- recipes


def recipe(r: random.Random) -> str:
  dish = r.choice((("apple", "cake"), ("barley", "soup"), ("honey", "loaf"), ("onion", "tart"), ("pear", "crumble"),
                   ("leek", "pie"), ("oat", "biscuits"), ("plum", "jam"), ("herb", "dumplings")))
  title = f"{cap(dish[0])} {dish[1]} as made in {r.choice(TOWNS)}"
  ingredients = [f"{r.randint(1, 4) * 50} g {dish[0]}{'s' if dish[0] in ('apple', 'pear', 'onion', 'plum') else ''}",
                 f"{r.randint(2, 8) * 25} g flour", f"{num(r.randint(1, 3))} eggs", "a pinch of salt",
                 f"{r.randint(1, 6) * 10} g butter", f"{r.randint(1, 4) * 50} ml milk"]
  ingredients = r.sample(ingredients, r.randint(4, 6))
  oven = r.choice((160, 170, 180, 190, 200))
  middle = ["Rub the butter into the flour until it looks like fine crumbs.",
            f"Prepare the {dish[0]}s, cutting them into pieces about the size of a thumbnail.",
            "Beat the eggs with the milk and stir them in a little at a time.",
            "Add the salt and mix gently; do not overwork it."]
  keep = sorted(r.sample(range(len(middle)), r.randint(2, len(middle))))
  chosen = ([f"Warm the oven to {oven} degrees."] + [middle[i] for i in keep]
            + [f"Bake for {r.randint(2, 9) * 5} minutes, until golden on top.",
               r.choice(("Leave it to rest for ten minutes before serving.", "Serve warm.",
                         "Let it cool on a rack before cutting."))])
  note = r.choice((f"My grandmother, {person(r)}, always said the secret was patience.",
                   f"This keeps for {num(r.randint(2, 5))} days in a cool larder.",
                   f"In {MONTHS[r.randrange(12)]} it is good with a spoonful of cream.",
                   "Halve the quantities for a small household."))
  lines = [title, "", "Ingredients:"] + [f"- {i}" for i in ingredients] + ["", "Method:"]
  lines += [f"{k}. {s}" for k, s in enumerate(chosen, 1)] + ["", note]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- field notes


def field_notes(r: random.Random) -> str:
  place, river = r.choice(TOWNS), r.choice(RIVERS)
  observer = person(r)
  month = r.randrange(12)
  day = r.randint(1, 20)
  out = [f"Field notes of {observer}, kept near {place} on {river}."]
  tally: dict[str, int] = {}
  for _ in range(r.randint(3, 7)):
    low, high = {"winter": (-4, 7), "spring": (4, 15), "summer": (12, 25), "autumn": (5, 16)}[SEASON[month]]
    bird, tree, temp = r.choice(BIRDS), r.choice(TREES), r.randint(low, high)
    count = r.randint(1, 9)
    tally[bird] = tally.get(bird, 0) + count
    sentences = [
        f"{day} {MONTHS[month]}. {cap(r.choice(WEATHER))}; {temp} degrees at eight in the morning.",
        f"Counted {num(count)} {bird}{'s' if count != 1 else ''} along the bank between the mill and the footbridge.",
        r.choice((f"A {r.choice(ANIMALS)} crossed the path ahead of me and vanished into the {tree}s.",
                  f"The {tree}s are {r.choice(('in bud', 'in full leaf', 'turning yellow', 'bare'))}.",
                  f"Found {r.choice(FLOWERS)} under the hedge by the {r.choice(('stile', 'gate', 'old wall'))}.",
                  f"The water was {r.choice(('high and fast', 'low and clear', 'brown after the rain'))}.")),
    ]
    if r.random() < 0.5:
      sentences.append(f"Heard a {r.choice(BIRDS)} calling from {r.choice(HILLS)} but could not see it.")
    out.append(" ".join(sentences))
    day += r.randint(1, 3)
    if day > 28:
      day, month = day - 28, (month + 1) % 12
  best = max(tally, key=tally.get)
  totals = ", ".join(num(v) + " " + k + ("s" if v != 1 else "") for k, v in sorted(tally.items()))
  out.append(f"Totals for these days: {totals}. "
             f"The {best} was the commonest bird on {river}, as it was last {SEASON[month]}.")
  return wrap_paragraphs(out)


# ----------------------------------------------------------------------------- dialogues


def dialogue(r: random.Random) -> str:
  a, b = r.sample(FIRST, 2)
  town, good = r.choice(TOWNS), r.choice(GOODS)
  price = r.randint(2, 9)
  lines = [
      f"{a}: Good morning. Is this the road to {town}?",
      f"{b}: It is, but you have a long way to go. Another {num(r.randint(3, 11))} miles at least.",
      f"{a}: Then I had better buy something to eat. What are you selling?",
      f"{b}: {cap(good)}, mostly. {num(price).capitalize()} pence a measure, and it is the best in the valley.",
      f"{a}: {num(price).capitalize()} pence? In {r.choice(TOWNS)} they ask {num(price - 1)}.",
      f"{b}: Then you should have bought it in {r.choice(TOWNS)}. But I will let you have two measures for "
      f"{num(2 * price - 1)}.",
      f"{a}: Done. And is there an inn on the way?",
      f"{b}: The {r.choice(('Red Lion', 'Plough', 'Three Bells', 'Drover', 'Mill Wheel'))}, just past the bridge over "
      f"{r.choice(RIVERS)}. Tell them {b} sent you.",
      f"{a}: Thank you. If the weather holds I will be there by {r.choice(('noon', 'evening', 'dark'))}.",
      f"{b}: It will not hold. It never does on that road.",
  ]
  return f"A conversation on the road to {town}\n\n" + "\n".join(lines[: r.randint(6, len(lines))])


# ----------------------------------------------------------------------------- village records


def records(r: random.Random) -> str:
  town = r.choice(TOWNS)
  year = r.randint(1780, 1910)
  out = [f"Records of the parish council of {town} for the year {year}."]
  funds = r.randint(40, 120)
  out.append(f"The year opened with {funds} pounds in the common fund.")
  for month in sorted(r.sample(range(12), r.randint(4, 8))):
    month = MONTHS[month]
    kind = r.randrange(4)
    if kind == 0:
      cost = r.randint(2, 15)
      funds -= cost
      out.append(f"In {month} the council paid {cost} pounds to {person(r)}, {r.choice(TRADES)}, for repairs to the "
                 f"{r.choice(('bridge', 'pound wall', 'school roof', 'well', 'church gate'))}. The fund stood at "
                 f"{funds} pounds.")
    elif kind == 1:
      gain = r.randint(3, 20)
      funds += gain
      out.append(f"In {month} the sale of {r.choice(GOODS)} from the common brought in {gain} pounds, leaving "
                 f"{funds} pounds in the fund.")
    elif kind == 2:
      out.append(f"In {month} {person(r)} complained that the lane by {r.choice(RIVERS)} was flooded again. It was "
                 f"agreed that {person(r)} would look into it before the next meeting.")
    else:
      out.append(f"In {month} {num(r.randint(2, 6))} new families were recorded in the parish, and the school asked "
                 f"for {num(r.randint(2, 9))} more benches.")
  out.append(f"The year closed with {funds} pounds in the common fund.")
  return wrap_paragraphs(out)


# ----------------------------------------------------------------------------- fables (long)


def fable(r: random.Random) -> str:
  hero, trade, home = r.choice(FIRST), r.choice(TRADES), r.choice(TOWNS)
  lost = r.choice(OBJECTS)
  giver = person(r)
  out = [f"The {trade} of {home}",
         f"There was once a {trade} in {home} called {hero}, who owned nothing of value except {lost}, which had "
         f"been a gift from {giver}. One {r.choice(('autumn', 'spring', 'winter', 'summer'))} morning {hero} found "
         f"that it was gone, and the whole house was searched without finding it."]
  visited = r.sample([t for t in TOWNS if t != home], r.randint(4, 8))
  for town in visited:
    helper, helper_trade = person(r), r.choice(TRADES)
    out.append(r.choice((
        f"{hero} walked to {town}, where {helper}, the {helper_trade}, said that a traveller had passed through "
        f"with something like it, heading towards {r.choice(HILLS)}. {hero} thanked the {helper_trade} and went on.",
        f"At {town} the river {r.choice(RIVERS)[4:]} was in flood, and {hero} spent {num(r.randint(2, 5))} days "
        f"helping {helper} carry {r.choice(GOODS)} to the higher barns before anyone would talk about the lost thing.",
        f"In {town} nobody had seen it, but {helper}, who kept the inn, gave {hero} a bed for the night and a piece of "
        f"advice: that lost things are usually nearer than they seem.",
        f"On the road to {town} {hero} met a {r.choice(ANIMALS)} caught in a snare and set it free, and took this as "
        f"a sign to keep going, though the weather was {r.choice(WEATHER)}.",
    )))
  out.append(f"After visiting {', '.join(visited[:-1])} and {visited[-1]}, {hero} came home to {home} tired and "
             f"empty-handed. But when {hero} hung up the coat that had made the whole journey, {lost} fell out of "
             f"the lining, where it had been all along. {hero} laughed for the first time in weeks, and wrote to "
             f"{giver} that evening to tell the whole story.")
  out.append(r.choice(("And so it is said in that valley that the longest road often ends at your own door.",
                       f"{hero} never again went looking for anything without first turning out every pocket.",
                       "The people of those towns still tell the story, though each of them tells it differently.")))
  return wrap_paragraphs(out)


# ----------------------------------------------------------------------------- travel journals (long)


def journal(r: random.Random) -> str:
  writer = person(r)
  companion = r.choice(FIRST)
  start, goal = r.sample(TOWNS, 2)
  reason = r.choice((f"to deliver {r.choice(OBJECTS)} to an aunt", "to find work for the winter",
                     f"to sell a cartload of {r.choice(GOODS)}", "to see the sea for the first time",
                     "to visit a brother who had been ill"))
  days = r.randint(7, 16)
  total = 0
  out = [f"Journal of a journey from {start} to {goal}, kept by {writer}",
         f"We set out from {start} with {companion} and a borrowed pony, {reason}. I mean to write something every "
         f"evening, however tired I am, and to keep count of the miles."]
  for day in range(1, days + 1):
    miles = r.randint(6, 19)
    total += miles
    town = r.choice([t for t in TOWNS if t not in (start, goal)])
    parts = [f"Day {day}. {cap(r.choice(WEATHER))}. We walked {miles} miles today and reached {town}, which makes "
             f"{total} miles since {start}."]
    parts.extend(r.sample((
          f"{companion} complained about blisters for most of the afternoon but would not stop.",
          f"We ate bread and {r.choice(GOODS)} by the side of {r.choice(RIVERS)} and watched a {r.choice(BIRDS)} "
          f"working along the far bank.",
          f"A {r.choice(TRADES)} named {person(r)} let us sleep in the loft over the workshop for nothing but a "
          f"story about {start}.",
          f"The road climbed over {r.choice(HILLS)} and from the top we could see {num(r.randint(2, 6))} church "
          f"towers and, far off, the hills beyond {goal}.",
          f"The pony lost a shoe and we spent an hour at a forge in {town} while the smith replaced it.",
          f"{companion} asked again why we had to go {reason[3:]} and I gave the same answer as before.",
          f"There were {r.choice(FLOWERS)} along the verges and the {r.choice(TREES)}s were "
          f"{r.choice(('heavy with leaf', 'just coming into bud', 'dropping their leaves', 'white with frost'))}.",
          f"We passed a party of drovers taking {r.randint(20, 90)} sheep to the market at {r.choice(TOWNS)}.",
    ), r.randint(2, 4)))
    out.append(" ".join(parts))
  out.append(f"Day {days + 1}. We came into {goal} a little after noon, {total + r.randint(3, 9)} miles in all "
             f"from {start}, and I cannot say I was sorry to see it. {companion} says we must go home by the coast "
             f"road, which is longer, but I have had enough of counting. I set out {reason}, and that much is done.")
  return wrap_paragraphs(out)


GENRES = ((letter, 5), (recipe, 3), (dialogue, 3), (field_notes, 4), (records, 3), (fable, 3), (journal, 2))


def generate(seed: int, target_bytes: int, essays) -> list[str]:
  """Documents (essays first, then seeded generated ones) up to ~`target_bytes`, shuffled."""
  r = random.Random(seed)
  docs = list(essays)
  size = sum(len(d.encode("utf-8")) for d in docs)
  makers = [g for g, w in GENRES for _ in range(w)]
  while size < target_bytes:
    doc = r.choice(makers)(r)
    docs.append(doc)
    size += len(doc.encode("utf-8")) + len(CORPUS_SEPARATOR)
  r.shuffle(docs)
  return docs


def corpus_texts() -> dict[str, str]:
  """{"train.txt": text, "eval.txt": text} of the shipped corpus."""
  train = generate(TRAIN_SEED, TRAIN_BYTES, ESSAYS[:-EVAL_ESSAYS])
  held = generate(EVAL_SEED, EVAL_BYTES, ESSAYS[-EVAL_ESSAYS:])
  return {name: CORPUS_SEPARATOR.join(docs) + "\n" for name, docs in (("train.txt", train), ("eval.txt", held))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m tools.corpus_gen", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=CORPUS_DIR, help="output directory")
  p.add_argument("--check", action="store_true", help="only compare with the files in --out")
  args = p.parse_args(argv)
  stale = []
  for name, text in corpus_texts().items():
    path = os.path.join(args.out, name)
    if args.check:
      with open(path, encoding="utf-8") if os.path.exists(path) else open(os.devnull, encoding="utf-8") as f:
        if f.read() != text:
          stale.append(path)
      continue
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
      f.write(text)
    print(f"wrote {path}: {len(text.encode('utf-8'))} bytes, {text.count(CORPUS_SEPARATOR) + 1} documents")
  if stale:
    print(f"corpus differs from the generator: {', '.join(stale)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
