"""The built-in demo catalog: a synthetic French product catalog in the ENS challenge file layout.

`generate_catalog(out_dir, rows=3000, seed=0)` writes, deterministically from the seed:

    OUT/X_train.csv, OUT/Y_train.csv    unnamed index, designation, description, productid, imageid / prdtypecode
    OUT/X_test.csv,  OUT/Y_test.csv     same layout; index values continue after train's
    OUT/image_train/, OUT/image_test/   image_<imageid>_product_<productid>.jpg, RGB JPEG
    OUT/label_noise.csv                 the flipped train rows, when label_noise > 0
    OUT/README.md                       what was generated

What it is: a stand-in for the Rakuten France data that lets the whole pipeline run offline, on a
CPU, in minutes. It keeps the properties the method depends on: the 27 real product type codes,
their real (imbalanced) proportions, HTML-laden French text with a third of the descriptions empty,
a few missing images, optional within-family label noise with its ground truth, and -- by design --
a signal split between the modalities. Every class has a text signature (one of 9 vocabulary
groups of 3 classes) and a visual signature (one of 9 shape/colour groups of 3 classes); the map
class -> (text group, visual group) is one-to-one, and two classes that share a text group never
share a visual group. Text alone therefore mostly narrows a sample down to 3 classes, so does the
image, and only their combination identifies the class. Weak class-specific hints (a class word in
the text, an accent mark on the image) keep each modality above chance within its group.

What it is NOT: real data. The vocabulary is a small made-up French word list, the images are
drawn shapes, and the difficulty is set by the generator, not by the world. Scores on it check that
the pipeline works and that fusion combines the modalities; they say nothing about real catalogs.
"""

from __future__ import annotations

import colorsys
import html.entities
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mmclf.progress import progress_bar

PRODUCT_TYPES = {
    "10": "used books",
    "40": "video games",
    "50": "video game accessories",
    "60": "consoles",
    "1140": "figurines",
    "1160": "trading cards",
    "1180": "wargames and figurine games",
    "1280": "children's toys",
    "1281": "board games",
    "1300": "model making and drones",
    "1301": "baby clothes and socks",
    "1302": "outdoor games",
    "1320": "childcare",
    "1560": "furniture",
    "1920": "household linen",
    "1940": "groceries",
    "2060": "decoration",
    "2220": "pet supplies",
    "2280": "magazines",
    "2403": "book lots",
    "2462": "used games and lots",
    "2522": "stationery",
    "2582": "garden furniture",
    "2583": "swimming pool",
    "2585": "garden tools and DIY",
    "2705": "new books",
    "2905": "PC games (download)",
}
CLASS_CODES = tuple(PRODUCT_TYPES)

# Rows per code in the real training data (84,916 rows): the demo keeps these proportions.
REAL_COUNTS = {
    "10": 3116, "40": 2508, "50": 1681, "60": 832, "1140": 2671, "1160": 3953, "1180": 764, "1280": 4870,
    "1281": 2070, "1300": 5045, "1301": 807, "1302": 2491, "1320": 3241, "1560": 5073, "1920": 4303,
    "1940": 803, "2060": 4993, "2220": 824, "2280": 4760, "2403": 4774, "2462": 1421, "2522": 4989,
    "2582": 2589, "2583": 10209, "2585": 2496, "2705": 2761, "2905": 872,
}

# Label noise flips a label to another code of the same family.
FAMILIES = {
    "books_media": ("10", "2280", "2403", "2705", "40", "50", "60", "2462", "2905"),
    "games_toys": ("1140", "1160", "1180", "1280", "1281", "1300", "1302"),
    "home_garden": ("1560", "1920", "2060", "2582", "2583", "2585"),
    "baby_other": ("1301", "1320", "1940", "2220", "2522"),
}
FAMILY_OF = {code: family for family, codes in FAMILIES.items() for code in codes}

# Text groups: 9 groups of 3 codes sharing a vocabulary. Position p of a code in its group is its
# "accent" (class hint) and sets its visual group (t + 3p) % 9, so codes sharing a text group look
# different and codes sharing a visual group come from 3 different text groups.
TEXT_GROUPS = (
    ("10", "2705", "2403"),
    ("2280", "1160", "2522"),
    ("40", "2905", "2462"),
    ("60", "50", "1300"),
    ("1140", "1180", "1281"),
    ("1280", "1301", "1320"),
    ("1920", "2060", "1560"),
    ("2582", "2583", "2585"),
    ("1302", "1940", "2220"),
)
TEXT_GROUP_OF = {code: t for t, codes in enumerate(TEXT_GROUPS) for code in codes}
ACCENT_OF = {code: p for codes in TEXT_GROUPS for p, code in enumerate(codes)}
VISUAL_GROUP_OF = {code: (TEXT_GROUP_OF[code] + 3 * ACCENT_OF[code]) % 9 for code in CLASS_CODES}
VISUAL_GROUPS = tuple(tuple(c for c in CLASS_CODES if VISUAL_GROUP_OF[c] == v) for v in range(9))

# One bold shape and one hue (degrees) per visual group.
VISUAL_STYLES = (
    ("disc", 0), ("square", 40), ("triangle", 80), ("cross", 120), ("star", 160),
    ("ring", 200), ("hexagon", 240), ("arrow", 280), ("bars", 320),
)
ACCENTS = ("dark dot", "white bar", "no mark")

SHARED_WORDS = (
    ("livre", "roman", "auteur", "édition", "tome", "chapitre", "lecture", "broché", "pages", "récit", "éditeur"),
    ("papier", "impression", "format", "numéro", "série", "illustré", "feuilles", "couleurs", "exemplaire"),
    ("jeu vidéo", "joueur", "niveau", "aventure", "multijoueur", "graphismes", "mission", "héros", "gameplay"),
    ("batterie", "câble", "usb", "chargeur", "compatible", "télécommande", "alimentation", "écran", "sans fil"),
    ("figurine", "collection", "peinte", "socle", "résine", "univers", "joueurs", "règles", "extension"),
    ("bébé", "enfant", "doux", "naissance", "mois", "douceur", "éveil", "tout-petit", "fille", "garçon"),
    ("maison", "intérieur", "salon", "chambre", "style", "moderne", "déco", "élégant", "scandinave"),
    ("jardin", "extérieur", "terrasse", "résistant", "été", "acier", "étanche", "soleil", "pelouse"),
    ("quotidien", "naturel", "pratique", "sortie", "balade", "plein air", "sachet", "paquet", "goût"),
)
CLASS_WORDS = {
    "10": ("occasion", "bon état", "annoté", "couverture usée", "ancienne édition"),
    "2705": ("nouveauté", "inédit", "premier tirage", "préface", "dédicacé"),
    "2403": ("lot de livres", "série complète", "carton de volumes", "intégrale", "bibliothèque"),
    "2280": ("magazine", "revue", "hebdomadaire", "journal", "mensuel"),
    "1160": ("carte", "booster", "rare", "holographique", "deck"),
    "2522": ("cahier", "stylo", "agenda", "classeur", "carnet"),
    "40": ("ps4", "xbox", "boîtier", "jaquette", "cartouche"),
    "2905": ("téléchargement", "code d'activation", "steam", "pc", "windows"),
    "2462": ("lot de jeux", "rétro", "sans notice", "testé fonctionnel", "pack"),
    "60": ("console", "portable", "mémoire", "go", "édition spéciale"),
    "50": ("manette", "support", "housse", "adaptateur", "protection"),
    "1300": ("drone", "hélice", "maquette", "moteur", "radiocommandé"),
    "1140": ("statuette", "funko", "pop", "manga", "articulée"),
    "1180": ("warhammer", "escouade", "armée", "miniatures", "wargame"),
    "1281": ("plateau", "dés", "jeu de société", "partie", "famille"),
    "1280": ("jouet", "peluche", "poupée", "jeu d'éveil", "musical"),
    "1301": ("chaussettes", "body", "pyjama", "coton", "bonnet"),
    "1320": ("poussette", "biberon", "siège auto", "tapis à langer", "porte-bébé"),
    "1920": ("housse de coussin", "taie", "drap", "couette", "linge"),
    "2060": ("lampe", "cadre", "vase", "guirlande", "sticker mural"),
    "1560": ("meuble", "table", "chaise", "étagère", "commode"),
    "2582": ("salon de jardin", "parasol", "transat", "hamac", "bain de soleil"),
    "2583": ("piscine", "filtre", "pompe", "chlore", "bâche"),
    "2585": ("perceuse", "tondeuse", "sécateur", "visseuse", "tuyau d'arrosage"),
    "1302": ("trampoline", "ballon", "cerf-volant", "pistolet à eau", "toboggan"),
    "1940": ("café", "chocolat", "bio", "épices", "thé"),
    "2220": ("chien", "chat", "croquettes", "laisse", "litière"),
}
GENERIC_WORDS = (
    "neuf", "lot", "qualité", "original", "idéal cadeau", "livraison rapide", "pas cher", "promo", "noir",
    "blanc", "rouge", "bleu", "grand", "petit", "nouveau", "authentique", "garantie", "taille unique", "pièce",
)
BRANDS = (
    "Lumaro", "Kestrel", "Valdor", "Nimbea", "Orsay & Fils", "Trivex", "Bellamie", "Quartzo", "Mirela",
    "Zanetti", "Pomelo", "Arkadia", "Célestin", "Brévent",
)
UNINFORMATIVE_TITLES = (
    "Article Neuf", "Lot Divers", "Produit De Qualité", "Réf. {n}", "Produit Original - Livraison Rapide",
    "{brand} {n}", "Vente Flash {n}", "Article D'occasion", "Nouveauté {brand}",
)
SENTENCES = (
    "{Shared} {shared2} de grande qualité.",
    "Idéal pour {shared} et {shared2}.",
    "{Brand} vous propose ce {shared} {generic}.",
    "Ce produit {generic} est parfait pour les amateurs de {shared}.",
    "Dimensions : {a} x {b} cm.",
    "Poids : {a}0 g.",
    "Livré avec {shared2}, {generic}.",
    "Très bon rapport qualité/prix, {generic}.",
    "Expédié sous {d} jours ouvrés.",
    "{Shared} : {shared2}, {generic}.",
    "L'article est {generic} et {generic2}.",
)
HINT_SENTENCES = ("{hint} inclus.", "Type : {hint}.", "Parfait comme {hint}.", "{hint}, état impeccable.")

# Generator settings that shape the difficulty (chosen so each modality alone gives a macro-F1
# of roughly 0.45-0.7 with simple models, and both together >= 0.85).
TITLE_UNINFORMATIVE_RATE = 0.12  # titles with no group or class word
CLASS_WORD_RATE = 0.4  # chance that a title / a description holds a word of the true class
SIBLING_WORD_RATE = 0.05  # chance that it holds a word of another class of the same text group
ACCENT_HINT_RATE = 0.45  # chance that the image carries its class's accent (else a random one)
HTML_ENTITY_RATE = 0.5  # descriptions written with HTML entities (titles: a fifth of that)
MIN_TRAIN_PER_CLASS = 5
MIN_TEST_PER_CLASS = 1
MIN_CLEAN_PER_CLASS = 2  # label noise leaves at least this many true labels per class in train

ABOUT = """\
# mmclf demo catalog

A **synthetic** French product catalog in the layout of the ENS / Rakuten France challenge files
(`X_train.csv`, `Y_train.csv`, `X_test.csv`, `Y_test.csv`, `image_train/`, `image_test/`), generated by
`mmclf demo-data`. It exists so the whole pipeline can run offline, on a CPU, in minutes.

What it keeps from the real data: the 27 product type codes and their imbalanced proportions
(about 1:13 between the rarest and the most common), titles and descriptions with HTML tags and
entities, about a third of the descriptions empty, a few listings without an image, and optional
label noise (train labels flipped within a family of codes, listed in `label_noise.csv`).

How the signal is split: every code has a text signature (a vocabulary group shared by 3 codes)
and a visual signature (a shape and colour shared by 3 other codes). No two codes share both, so
text alone or image alone mostly narrows a listing down to 3 codes; combining them identifies it.

What it is **not**: real data. The vocabulary is a small made-up word list, the images are drawn
shapes, and the difficulty is set by the generator. Scores on it show that the pipeline runs and
that fusion combines modalities; they say nothing about real catalogs.
"""


def allocate_counts(total: int, weights: dict[str, float], floor: int) -> dict[str, int]:
    """Split `total` rows over classes proportionally to `weights`, with at least `floor` each."""
    codes = list(weights)
    if total < floor * len(codes):
        raise ValueError(f"{total} rows cannot hold {floor} rows for each of the {len(codes)} classes")
    w = np.array([weights[c] for c in codes], dtype=float)
    pinned = np.zeros(len(codes), dtype=bool)
    while True:  # pin classes whose share falls under the floor, re-share the rest
        free_total = total - floor * pinned.sum()
        share = np.where(pinned, floor, free_total * w / w[~pinned].sum())
        newly = (~pinned) & (share < floor)
        if not newly.any():
            break
        pinned |= newly
    counts = np.where(pinned, floor, np.floor(share)).astype(int)
    remainder = np.where(pinned, -1.0, share - np.floor(share))
    for i in np.argsort(-remainder, kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(codes, counts.tolist()))


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """`n` distinct random integers in [low, high)."""
    ids = np.empty(0, dtype=np.int64)
    while len(ids) < n:
        draw = rng.integers(low, high, size=n - len(ids) + 16, dtype=np.int64)
        ids = np.concatenate([ids, draw])
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]
    return ids[:n]


def entity_encode(text: str) -> str:
    """Write accented letters and apostrophes as HTML entities, as many real listings do."""
    out = []
    for ch in text:
        if ch == "'":
            out.append("&#39;")
        elif ch == "&":
            out.append("&amp;")
        elif ord(ch) > 127 and ord(ch) in html.entities.codepoint2name:
            out.append(f"&{html.entities.codepoint2name[ord(ch)]};")
        else:
            out.append(ch)
    return "".join(out)


def pick(rng: np.random.Generator, words) -> str:
    return words[int(rng.integers(len(words)))]


def hint_words(rng: np.random.Generator, code: str) -> list[str]:
    """The class word (sometimes) and a sibling class's word (rarely) for one title or description."""
    words = []
    if rng.random() < CLASS_WORD_RATE:
        words.append(pick(rng, CLASS_WORDS[code]))
    if rng.random() < SIBLING_WORD_RATE:
        siblings = [c for c in TEXT_GROUPS[TEXT_GROUP_OF[code]] if c != code]
        words.append(pick(rng, CLASS_WORDS[pick(rng, siblings)]))
    return words


def make_title(rng: np.random.Generator, code: str) -> str:
    if rng.random() < TITLE_UNINFORMATIVE_RATE:
        template = pick(rng, UNINFORMATIVE_TITLES)
        return template.format(n=int(rng.integers(100, 99999)), brand=pick(rng, BRANDS))
    shared = SHARED_WORDS[TEXT_GROUP_OF[code]]
    words = [pick(rng, shared) for _ in range(int(rng.integers(1, 4)))]
    words += hint_words(rng, code)
    words += [pick(rng, GENERIC_WORDS) for _ in range(int(rng.integers(0, 3)))]
    words = [words[i] for i in rng.permutation(len(words))]
    if rng.random() < 0.4:
        words.insert(0, pick(rng, BRANDS))
    if rng.random() < 0.3:
        words.append(pick(rng, (f"{int(rng.integers(5, 120))} cm", f"Réf {int(rng.integers(1000, 9999))}",
                                f"x{int(rng.integers(2, 12))}", f"{int(rng.integers(1, 5))}e édition")))
    title = " ".join(words)
    return title.title() if rng.random() < 0.6 else title[0].upper() + title[1:]


def make_description(rng: np.random.Generator, code: str) -> str:
    shared = SHARED_WORDS[TEXT_GROUP_OF[code]]
    n_sentences = int(rng.integers(1, 6)) if rng.random() < 0.85 else int(rng.integers(8, 20))
    sentences = []
    for _ in range(n_sentences):
        brand, shared_word = pick(rng, BRANDS), pick(rng, shared)
        values = {"shared": shared_word, "Shared": shared_word.capitalize(), "shared2": pick(rng, shared),
                  "generic": pick(rng, GENERIC_WORDS), "generic2": pick(rng, GENERIC_WORDS), "Brand": brand,
                  "a": int(rng.integers(2, 90)), "b": int(rng.integers(2, 90)), "d": int(rng.integers(1, 8))}
        sentences.append(pick(rng, SENTENCES).format(**values))
    hints = hint_words(rng, code)
    if hints:
        sentence = pick(rng, HINT_SENTENCES).format(hint=" ".join(hints))
        sentences.insert(int(rng.integers(len(sentences) + 1)), sentence[0].upper() + sentence[1:])
    style = rng.random()
    if style < 0.3:
        text = " ".join(sentences)
    elif style < 0.55:
        text = "<br />".join(sentences)
    elif style < 0.8:
        head, rest = sentences[0], sentences[1:]
        items = "".join(f"<li>{s}</li>" for s in rest)
        text = f"<p><strong>{head}</strong></p>" + (f"<ul>{items}</ul>" if items else "")
    else:
        text = "".join(f"<p>{s}</p>" for s in sentences)
    return entity_encode(text) if rng.random() < HTML_ENTITY_RATE else text


def hsv_colour(hue_degrees: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_degrees % 360) / 360, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def polygon(points, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Unit-circle points -> rotated, scaled and moved to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points]


def regular(n: int, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular n-gon, or an n-pointed star when `inner` (radius of the inner points) is given."""
    if inner is None:
        return [(math.cos(2 * math.pi * k / n - math.pi / 2), math.sin(2 * math.pi * k / n - math.pi / 2))
                for k in range(n)]
    points = []
    for k in range(2 * n):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi * k / n - math.pi / 2
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


SHAPE_POINTS = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": regular(3),
    "cross": [(-0.35, -1), (0.35, -1), (0.35, -0.35), (1, -0.35), (1, 0.35), (0.35, 0.35), (0.35, 1),
              (-0.35, 1), (-0.35, 0.35), (-1, 0.35), (-1, -0.35), (-0.35, -0.35)],
    "star": regular(5, inner=0.45),
    "hexagon": regular(6),
    "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)],
}
BAR_POINTS = ([(-1, -0.9), (-0.25, -0.9), (-0.25, 0.9), (-1, 0.9)], [(0.25, -0.9), (1, -0.9), (1, 0.9), (0.25, 0.9)])


def draw_product_image(rng: np.random.Generator, visual_group: int, accent: int, size: int) -> Image.Image:
    """A jittered bold shape of the group's colour on a pale background, with an accent mark."""
    shape, hue = VISUAL_STYLES[visual_group]
    background = hsv_colour(rng.uniform(0, 360), rng.uniform(0.08, 0.3), rng.uniform(0.7, 0.9))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.3:  # a grey distractor
        x, y = rng.uniform(0, 0.8, size=2) * size
        w, h = rng.uniform(0.1, 0.25, size=2) * size
        grey = int(rng.integers(90, 200))
        draw.rectangle([x, y, x + w, y + h], fill=(grey, grey, grey))
    radius = rng.uniform(0.22, 0.34) * size
    cx, cy = (0.5 + rng.uniform(-0.14, 0.14, size=2)) * size
    angle = rng.uniform(0, 2 * math.pi)
    colour = hsv_colour(hue + rng.uniform(-8, 8), rng.uniform(0.7, 1.0), rng.uniform(0.65, 0.95))
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(radius * 0.4)))
    elif shape == "bars":
        for bar in BAR_POINTS:
            draw.polygon(polygon(bar, cx, cy, radius, angle), fill=colour)
    else:
        draw.polygon(polygon(SHAPE_POINTS[shape], cx, cy, radius, angle), fill=colour)
    if accent == 0:
        r = radius * 0.3
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 25, 25))
    elif accent == 1:
        bar = [(-0.8, -0.18), (0.8, -0.18), (0.8, 0.18), (-0.8, 0.18)]
        draw.polygon(polygon(bar, cx, cy, radius, angle + math.pi / 2), fill=(250, 250, 250))
    noise = rng.integers(-10, 11, size=(size, size, 3), dtype=np.int16)  # uniform: as good as Gaussian, faster
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def image_name(image_id: int, product_id: int) -> str:
    return f"image_{image_id}_product_{product_id}.jpg"


OUTPUT_FILES = ("X_train.csv", "Y_train.csv", "X_test.csv", "Y_test.csv", "label_noise.csv", "README.md")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    images = [p for folder in ("image_train", "image_test") for p in sorted((out / folder).glob("image_*.jpg"))]
    if (existing or images) and not overwrite:
        raise ValueError(f"{out} already holds a catalog ({len(existing)} files, {len(images)} images); "
                         "pass overwrite=True (--overwrite) to replace it")
    for path in existing + images:
        path.unlink()
    (out / "image_train").mkdir(parents=True, exist_ok=True)
    (out / "image_test").mkdir(parents=True, exist_ok=True)


def generate_catalog(
    out_dir: str | Path,
    rows: int = 3000,
    test_rows: int | None = None,
    seed: int = 0,
    label_noise: float = 0.0,
    image_size: int = 64,
    missing_image_rate: float = 0.04,
    empty_description_rate: float = 0.35,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the demo catalog into `out_dir` and return a summary of what was written.

    `rows` train rows (X_train.csv), `test_rows` test rows (default 15 % of `rows`), class counts in
    the real proportions with at least 5 train rows and 1 test row per class. `label_noise` is the
    fraction of train rows whose label is flipped to another code of the same family.
    """
    n_classes = len(CLASS_CODES)
    if test_rows is None:
        test_rows = max(MIN_TEST_PER_CLASS * n_classes, round(0.15 * rows))
    if rows < MIN_TRAIN_PER_CLASS * n_classes:
        raise ValueError(f"rows={rows} is too small: the train split needs at least {MIN_TRAIN_PER_CLASS} rows "
                         f"for each of the {n_classes} classes ({MIN_TRAIN_PER_CLASS * n_classes} rows)")
    if test_rows < MIN_TEST_PER_CLASS * n_classes:
        raise ValueError(f"test_rows={test_rows} is too small: the test split needs at least "
                         f"{MIN_TEST_PER_CLASS * n_classes} rows to hold each of the {n_classes} classes")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise={label_noise} must be in [0, 1)")
    if not 0.0 <= missing_image_rate < 1.0:
        raise ValueError(f"missing_image_rate={missing_image_rate} must be in [0, 1)")
    if not 0.0 <= empty_description_rate <= 1.0:
        raise ValueError(f"empty_description_rate={empty_description_rate} must be in [0, 1]")
    if image_size < 16:
        raise ValueError(f"image_size={image_size} must be at least 16 pixels")

    out = Path(out_dir)
    prepare_out_dir(out, overwrite)
    rng = np.random.default_rng(seed)
    splits = {}
    product_ids = unique_ids(rng, rows + test_rows, 10_000_000, 4_300_000_000)
    image_ids = unique_ids(rng, rows + test_rows, 900_000_000, 1_330_000_000)
    start = 0
    for split, n, floor in (("train", rows, MIN_TRAIN_PER_CLASS), ("test", test_rows, MIN_TEST_PER_CLASS)):
        counts = allocate_counts(n, REAL_COUNTS, floor)
        labels = np.repeat(np.array(CLASS_CODES), [counts[c] for c in CLASS_CODES])[rng.permutation(n)]
        index = np.arange(start, start + n)
        titles = [make_title(rng, code) for code in labels]
        descriptions = [make_description(rng, code) for code in labels]
        empty = rng.permutation(n)[: round(empty_description_rate * n)]
        for i in empty:
            descriptions[i] = ""
        missing = np.zeros(n, dtype=bool)
        missing[rng.permutation(n)[: round(missing_image_rate * n)]] = True
        accents = [ACCENT_OF[c] if rng.random() < ACCENT_HINT_RATE else int(rng.integers(3)) for c in labels]
        splits[split] = {"index": index, "labels": labels, "titles": titles, "descriptions": descriptions,
                         "missing": missing, "accents": accents, "counts": counts,
                         "product_ids": product_ids[start:start + n], "image_ids": image_ids[start:start + n]}
        start += n

    noisy_labels, flips = flip_labels(rng, splits["train"]["labels"], label_noise)

    total = rows + test_rows
    with progress_bar(total=total, desc="demo catalog images", unit="img", disable=not progress) as bar:
        for split, part in splits.items():
            folder = out / f"image_{split}"
            for i, code in enumerate(part["labels"]):
                bar.update(1)
                if part["missing"][i]:
                    continue
                image_rng = np.random.default_rng((seed, int(part["index"][i])))
                image = draw_product_image(image_rng, VISUAL_GROUP_OF[code], part["accents"][i], image_size)
                image.save(folder / image_name(part["image_ids"][i], part["product_ids"][i]), "JPEG", quality=90)

    for split, part in splits.items():
        x = pd.DataFrame({"designation": part["titles"], "description": part["descriptions"],
                          "productid": part["product_ids"], "imageid": part["image_ids"]}, index=part["index"])
        labels = noisy_labels if split == "train" else part["labels"]
        y = pd.DataFrame({"prdtypecode": labels.astype(int)}, index=part["index"])
        x.to_csv(out / f"X_{split}.csv")
        y.to_csv(out / f"Y_{split}.csv")
    if flips:
        train = splits["train"]
        pd.DataFrame({
            "index": [int(train["index"][i]) for i in flips],
            "split": "train",
            "true_prdtypecode": [int(train["labels"][i]) for i in flips],
            "noisy_prdtypecode": [int(noisy_labels[i]) for i in flips],
        }).to_csv(out / "label_noise.csv", index=False)

    summary = {
        "out_dir": str(out),
        "seed": seed,
        "rows": {"train": rows, "test": test_rows},
        "image_size": image_size,
        "label_noise": label_noise,
        "flipped_labels": len(flips),
        "missing_images": {s: int(p["missing"].sum()) for s, p in splits.items()},
        "empty_descriptions": {s: sum(d == "" for d in p["descriptions"]) for s, p in splits.items()},
        "class_counts": {s: p["counts"] for s, p in splits.items()},
    }
    (out / "README.md").write_text(readme_text(summary), encoding="utf-8")
    summary["files"] = sorted(p.name for p in out.iterdir() if p.is_file())
    summary["images"] = {s: len(p["missing"]) - int(p["missing"].sum()) for s, p in splits.items()}
    return summary


def flip_labels(rng: np.random.Generator, labels: np.ndarray, fraction: float) -> tuple[np.ndarray, list[int]]:
    """Flip round(fraction * len) labels to another code of the same family; returns (noisy, flipped rows).

    Every class keeps at least MIN_CLEAN_PER_CLASS true labels, so it stays present in train.
    """
    n_flip = round(fraction * len(labels))
    noisy = labels.copy()
    clean_left = {c: int((labels == c).sum()) for c in CLASS_CODES}
    flips = []
    for i in rng.permutation(len(labels)):
        if len(flips) == n_flip:
            break
        code = labels[i]
        if clean_left[code] <= MIN_CLEAN_PER_CLASS:
            continue
        clean_left[code] -= 1
        noisy[i] = pick(rng, [c for c in FAMILIES[FAMILY_OF[code]] if c != code])
        flips.append(int(i))
    if len(flips) < n_flip:
        raise ValueError(f"label_noise={fraction} is too high: only {len(flips)} of {n_flip} labels can be "
                         f"flipped while keeping {MIN_CLEAN_PER_CLASS} true labels per class")
    return noisy, sorted(flips)


def readme_text(summary: dict) -> str:
    counts, missing, empty = summary["class_counts"], summary["missing_images"], summary["empty_descriptions"]
    noise_file = ", listed in label_noise.csv" if summary["flipped_labels"] else ""
    lines = [
        ABOUT,
        "## This catalog",
        "",
        f"- seed: {summary['seed']}",
        f"- rows: {summary['rows']['train']} train, {summary['rows']['test']} test (Y_test.csv keeps the test labels)",
        f"- images: {summary['image_size']} px RGB JPEG; missing: {missing['train']} train, {missing['test']} test",
        f"- empty descriptions: {empty['train']} train, {empty['test']} test",
        f"- label noise: {summary['label_noise']} ({summary['flipped_labels']} train labels flipped{noise_file})",
        "",
        "| code | meaning | family | text group | visual group | image: shape, hue, class accent | train | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for code in CLASS_CODES:
        shape, hue = VISUAL_STYLES[VISUAL_GROUP_OF[code]]
        lines.append(f"| {code} | {PRODUCT_TYPES[code]} | {FAMILY_OF[code]} | {TEXT_GROUP_OF[code]} | "
                     f"{VISUAL_GROUP_OF[code]} | {shape}, hue {hue}, {ACCENTS[ACCENT_OF[code]]} | {counts['train'][code]} | "
                     f"{counts['test'][code]} |")
    return "\n".join(lines) + "\n"

