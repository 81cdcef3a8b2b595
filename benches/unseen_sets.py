#!/usr/bin/env python3
"""Fresh evaluation sets that no tuning has seen (issue 20: measure on unseen audio).

Every figure the project quotes was measured on ``../shared/eval``, the data the
engine was tuned on. This script makes new sets in the same format, so that
``benches/peer_pipeline.py --set DIR`` / ``--long FILE`` (and ``benches/wer.py``)
can read them by their folder:

* ``short``: about 30 short medical dictations (3 to 20 s);
* ``mixed``: about 40 recordings from 3 s to 5 min, sentences joined with
  short pauses;
* ``long``: one recording of about 20 min (natural pauses of 0.3 to 1.2 s), or
  ``--long-count`` of them: one long file is one chaotic sample of conditioned
  decoding (its WER moves by points either way with any change), so claims about
  long audio want several;
* ``real``: real human speech, copied from a local folder (``--real-from
  DIR``, see below); nothing is downloaded.

The synthetic sets are spoken by espeak-ng (``apt-get install espeak-ng sox``)
with voices and variants that ``../shared/eval/dictation`` does not use, at
varied speed (``-s``) and pitch (``-p``). Their texts come from a template
grammar of clinical sentences written here (medication orders with doses and
frequencies, vitals, laboratory values, histories, examination findings,
imaging, assessments, plans, follow-ups, identifiers), with every number
spelled out as it is spoken. No sentence of the new sets equals one in
``../shared/eval/*/manifest.jsonl`` (compared after ``wer.normalize``), and no
sentence occurs twice across the new sets: the script checks both and fails if
either is violated.

Format (as ``../shared/eval/<set>``): a folder per set with 16 kHz mono 16-bit
PCM WAV files and a ``manifest.jsonl``, one JSON object per line::

    {"audio": "short_001.wav", "text": "...", "seconds": 7.41, "voice": "en-029",
     "wpm": 162, "pitch": 47, ...}

Multi-sentence recordings (``mixed``, ``long``) also carry ``segments``
(``start``, ``end`` in seconds, ``text``, ``voice``, ``wpm``, ``pitch``). A
``sets.json`` beside the sets records the seed, the espeak-ng version and a
summary per set.

``--real-from DIR`` reads ``DIR/clips.jsonl``, one JSON object per line with
``file`` (path relative to DIR), ``name`` (output name without ``.wav``),
``text`` (reference), ``source``, ``corpus`` and ``license`` (and optionally
``speaker``, ``notes``); each file is converted with sox to 16 kHz mono 16-bit
WAV and ``DIR/SOURCES.md`` is copied beside it. Clips whose name or
normalised text is already in ``../shared/eval/real`` are refused.

The output is reproducible: the same ``--seed`` and espeak-ng version give the
same texts and audio.

Usage (from the repository root)::

    python3 benches/unseen_sets.py --real-from /work/unseen-real
    python3 benches/unseen_sets.py --out /tmp/unseen --sets short,long --seed 7
    python3 benches/unseen_sets.py --out /tmp/long4 --sets long --long-minutes 10 --long-count 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wer import normalize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = Path(os.environ.get("MMT_SHARED_EVAL", REPO.parent / "shared" / "eval"))
DEFAULT_OUT = REPO / "bench-out" / "unseen"
SAMPLE_RATE = 16000
SET_NAMES = ("short", "mixed", "long", "real")

# Voices and variants ../shared/eval/dictation does not use (it uses en-gb+f3,
# en+m7, en-gb, en-us+m3, en-us, en-us+m1, en-gb-x-rp+f4, en-us+f2). None of
# these combinations occurs there, and the variants f3, m7, m3, m1, f2 are left
# out altogether.
#
# en-us+Andy, en-gb-scotland+f5 and en-gb-x-gbcwmd+m2 were tried and dropped:
# faster-whisper tiny.en's WER on them was 55-65 % at 165 words per minute,
# against 12-46 % for the voices kept (about what it scores on the shared
# dictation voices).
VOICES = (
    "en-us+f4", "en-us+m5", "en-us+klatt2", "en-us+m6", "en-gb-scotland",
    "en-us+steph", "en-029", "en-029+m4", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-us-nyc", "en-us-nyc+belinda", "en-gb-x-rp+m6", "en+klatt",
)
SHARED_DICTATION_VOICES = frozenset(
    {"en-gb+f3", "en+m7", "en-gb", "en-us+m3", "en-us", "en-us+m1", "en-gb-x-rp+f4", "en-us+f2"})


# --------------------------------------------------------------------------
# Numbers as they are spoken
# --------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = {
    1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh",
    8: "eighth", 9: "ninth", 10: "tenth", 11: "eleventh", 12: "twelfth", 13: "thirteenth",
    14: "fourteenth", 15: "fifteenth", 16: "sixteenth", 17: "seventeenth", 18: "eighteenth",
    19: "nineteenth", 20: "twentieth", 30: "thirtieth",
}
MONTHS = ("January February March April May June July August September October November "
          "December").split()


def number_words(n: int) -> str:
    """``142`` -> ``one hundred forty two`` (0 <= n < 1,000,000; no hyphens, no "and")."""
    if n < 0 or n >= 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_words(thousands)} thousand" + (f" {number_words(rest)}" if rest else "")


def decimal_words(value: float, places: int = 1) -> str:
    """``4.25`` with 2 places -> ``four point two five``; a whole number has no point."""
    text = f"{value:.{places}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0")
    spoken = number_words(int(whole))
    if fraction:
        spoken += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return spoken


def ordinal_words(n: int) -> str:
    """``22`` -> ``twenty second`` (1 <= n <= 31)."""
    if n in _ORDINALS:
        return _ORDINALS[n]
    tens, ones = divmod(n, 10)
    return f"{_TENS[tens]} {_ORDINALS[ones]}"


def year_words(year: int) -> str:
    """``1968`` -> ``nineteen sixty eight``; ``2004`` -> ``two thousand four``."""
    if 2000 <= year < 2010:
        return number_words(year)
    high, low = divmod(year, 100)
    if low == 0:
        return f"{number_words(high)} hundred"
    return f"{number_words(high)} {'oh ' + _ONES[low] if low < 10 else number_words(low)}"


def digits_words(digits: str) -> str:
    """``4172`` -> ``four one seven two``."""
    return " ".join(_ONES[int(d)] for d in digits)


# --------------------------------------------------------------------------
# The clinical sentence grammar
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Drug:
    """A medication with plausible doses, unit, routes and frequencies."""

    name: str
    doses: tuple[float, ...]
    unit: str
    routes: tuple[str, ...]
    frequencies: tuple[str, ...]
    indications: tuple[str, ...] = ()


DRUGS = (
    Drug("lisinopril", (5, 10, 20, 40), "milligrams", ("by mouth",), ("once daily",),
         ("blood pressure", "proteinuria")),
    Drug("metoprolol succinate", (25, 50, 100), "milligrams", ("by mouth",), ("once daily",),
         ("rate control", "angina")),
    Drug("atorvastatin", (10, 20, 40, 80), "milligrams", ("by mouth",),
         ("at bedtime", "once daily"), ("hyperlipidemia",)),
    Drug("amlodipine", (2.5, 5, 10), "milligrams", ("by mouth",), ("once daily",),
         ("blood pressure",)),
    Drug("losartan", (25, 50, 100), "milligrams", ("by mouth",), ("once daily",),
         ("blood pressure", "diabetic kidney disease")),
    Drug("chlorthalidone", (12.5, 25), "milligrams", ("by mouth",), ("every morning",),
         ("blood pressure",)),
    Drug("gabapentin", (100, 300, 600), "milligrams", ("by mouth",),
         ("three times daily", "at bedtime"), ("neuropathic pain", "postherpetic neuralgia")),
    Drug("sertraline", (25, 50, 100), "milligrams", ("by mouth",), ("once daily",),
         ("depression", "generalized anxiety")),
    Drug("levothyroxine", (25, 50, 75, 88, 112, 125), "micrograms", ("by mouth",),
         ("every morning on an empty stomach",), ("hypothyroidism",)),
    Drug("prednisone", (10, 20, 40, 60), "milligrams", ("by mouth",),
         ("daily for five days", "daily with a taper over two weeks"),
         ("the asthma flare", "gout")),
    Drug("cephalexin", (250, 500), "milligrams", ("by mouth",),
         ("four times daily for seven days",), ("cellulitis",)),
    Drug("doxycycline", (100,), "milligrams", ("by mouth",),
         ("twice daily for ten days",), ("early Lyme disease", "cellulitis")),
    Drug("ceftriaxone", (1, 2), "grams", ("intravenously",), ("every twenty four hours",),
         ("pyelonephritis", "pneumonia")),
    Drug("piperacillin tazobactam", (3.375, 4.5), "grams", ("intravenously",),
         ("every six hours", "every eight hours"), ("intra abdominal infection",)),
    Drug("enoxaparin", (40, 60, 80), "milligrams", ("subcutaneously",),
         ("once daily", "every twelve hours"), ("venous thromboembolism prophylaxis",)),
    Drug("heparin", (5000,), "units", ("subcutaneously",),
         ("every eight hours", "every twelve hours"), ("deep vein thrombosis prophylaxis",)),
    Drug("insulin aspart", (3, 4, 6, 8, 10), "units", ("subcutaneously",),
         ("before each meal",), ("glucose control",)),
    Drug("insulin detemir", (10, 14, 18, 24), "units", ("subcutaneously",),
         ("at bedtime", "every evening"), ("type two diabetes",)),
    Drug("hydromorphone", (0.5, 1), "milligrams", ("intravenously",),
         ("every three hours as needed",), ("severe pain",)),
    Drug("oxycodone", (5, 10), "milligrams", ("by mouth",),
         ("every six hours as needed",), ("moderate pain",)),
    Drug("acetaminophen", (500, 650, 1000), "milligrams", ("by mouth",),
         ("every six hours as needed", "every eight hours"), ("pain or fever",)),
    Drug("naproxen", (250, 500), "milligrams", ("by mouth",), ("twice daily with food",),
         ("knee pain", "back pain")),
    Drug("pantoprazole", (20, 40), "milligrams", ("by mouth", "intravenously"),
         ("once daily", "twice daily"), ("reflux", "gastritis")),
    Drug("clopidogrel", (75,), "milligrams", ("by mouth",), ("once daily",),
         ("the coronary stent",)),
    Drug("aspirin", (81, 325), "milligrams", ("by mouth",), ("once daily",),
         ("secondary prevention",)),
    Drug("torsemide", (10, 20, 40), "milligrams", ("by mouth",),
         ("once daily", "twice daily"), ("volume overload",)),
    Drug("spironolactone", (12.5, 25, 50), "milligrams", ("by mouth",), ("once daily",),
         ("heart failure", "ascites")),
    Drug("metformin", (500, 850, 1000), "milligrams", ("by mouth",),
         ("twice daily with meals",), ("type two diabetes",)),
    Drug("empagliflozin", (10, 25), "milligrams", ("by mouth",), ("every morning",),
         ("type two diabetes", "heart failure")),
    Drug("tamsulosin", (0.4, 0.8), "milligrams", ("by mouth",), ("at bedtime",),
         ("urinary retention", "benign prostatic hyperplasia")),
    Drug("montelukast", (10,), "milligrams", ("by mouth",), ("every evening",),
         ("asthma", "allergic rhinitis")),
    Drug("rivaroxaban", (15, 20), "milligrams", ("by mouth",), ("once daily with dinner",),
         ("atrial fibrillation", "pulmonary embolism")),
    Drug("diltiazem", (120, 180, 240), "milligrams", ("by mouth",), ("once daily",),
         ("rate control",)),
    Drug("methotrexate", (10, 15, 20), "milligrams", ("by mouth",), ("once weekly",),
         ("rheumatoid arthritis",)),
    Drug("allopurinol", (100, 300), "milligrams", ("by mouth",), ("once daily",),
         ("gout prevention",)),
    Drug("duloxetine", (30, 60), "milligrams", ("by mouth",), ("once daily",),
         ("chronic back pain", "depression")),
    Drug("magnesium sulfate", (2, 4), "grams", ("intravenously",), ("over two hours",),
         ("hypomagnesemia",)),
    Drug("potassium chloride", (20, 40), "milliequivalents", ("by mouth",),
         ("twice daily", "once now"), ("hypokalemia",)),
)

SIDE_EFFECTS = ("a persistent dry cough", "ankle swelling", "muscle aches", "dizziness",
                "a diffuse itchy rash", "nausea", "low heart rate", "elevated liver enzymes")
FIRST_NAMES = ("Oswin", "Marisol", "Thaddeus", "Ingrid", "Cornelius", "Rosalind", "Desmond",
               "Philippa", "Leopold", "Henrietta", "Augustin", "Beatrix", "Solomon", "Winifred",
               "Emeric", "Clementine", "Ambrose", "Odette", "Fitzgerald", "Lorelei")
LAST_NAMES = ("Abernathy", "Kowalczyk", "Pemberton", "Okonkwo", "Haverford", "Lindqvist",
              "Castellanos", "Whitcombe", "Nakagawa", "Fairweather", "Ostrowski", "Delaney",
              "Thistlewood", "Marchetti", "Quartermaine", "Ellingsworth")
CONDITIONS = ("atrial fibrillation", "type two diabetes", "stage three chronic kidney disease",
              "moderate persistent asthma", "hypothyroidism", "osteoarthritis of both knees",
              "major depressive disorder", "gastroesophageal reflux disease",
              "obstructive sleep apnea", "peripheral artery disease", "a prior ischemic stroke",
              "migraine without aura", "rheumatoid arthritis", "benign prostatic hyperplasia",
              "hyperlipidemia", "coronary artery disease with two prior stents",
              "heart failure with preserved ejection fraction", "chronic hepatitis C",
              "systemic lupus erythematosus", "alcohol use disorder in remission")
SYMPTOMS = ("intermittent palpitations", "worsening shortness of breath on exertion",
            "lower back pain radiating down the left leg", "a productive cough and fevers",
            "burning with urination and urinary frequency", "epigastric burning after meals",
            "lightheadedness when standing up", "swelling of both lower legs",
            "a painful blistering rash on the right flank",
            "a severe headache with light sensitivity",
            "nausea with several episodes of vomiting", "left knee swelling after a fall",
            "progressive fatigue and weight loss", "dark tarry stools",
            "numbness and tingling in both feet", "a sore throat and painful swallowing",
            "right lower quadrant abdominal pain", "blurry vision in the left eye")
DURATIONS = ("two days", "three days", "about a week", "ten days", "three weeks", "a month",
             "several months", "six hours", "since yesterday evening", "two weeks")
EXAM_FINDINGS = (
    "the abdomen is tender in the right lower quadrant with voluntary guarding",
    "there is trace pitting edema at both ankles",
    "the oropharynx is red with exudate on both tonsils",
    "the right tympanic membrane is bulging and dull",
    "there is a warm tender area of redness on the left forearm",
    "strength is five out of five in all four extremities",
    "the thyroid is diffusely enlarged without a discrete nodule",
    "there are scattered expiratory wheezes in both lung fields",
    "cranial nerves two through twelve are grossly intact",
    "the surgical wound is healing well without drainage",
    "there is point tenderness over the lateral malleolus",
    "the jugular venous pressure is elevated to the angle of the jaw",
    "there is a soft systolic murmur best heard at the left sternal border",
    "the straight leg raise is positive on the left at forty degrees",
    "the skin is warm and dry with normal capillary refill",
    "there are fine crackles at the right lung base",
    "the left pupil is sluggish compared with the right",
    "bowel sounds are hypoactive and the abdomen is mildly distended",
)
IMAGING = (
    ("A chest x ray", ("a left lower lobe infiltrate", "mild pulmonary vascular congestion",
                       "no acute cardiopulmonary process", "a small right pleural effusion")),
    ("A CT of the abdomen and pelvis", ("acute uncomplicated appendicitis",
                                        "a four millimeter stone in the left ureter",
                                        "sigmoid diverticulitis without abscess")),
    ("An ultrasound of the right leg", ("no deep vein thrombosis",
                                        "an occlusive thrombus in the popliteal vein")),
    ("An MRI of the left knee", ("a tear of the medial meniscus",
                                 "a partial tear of the anterior cruciate ligament")),
    ("A CT of the chest with contrast", ("a segmental pulmonary embolism on the right",
                                         "a six millimeter nodule in the right upper lobe")),
    ("An echocardiogram", ("normal left ventricular size and function",
                           "moderate aortic stenosis", "a small pericardial effusion")),
)
LAB_RANGES = (
    ("sodium", 126, 147, 0, ""), ("potassium", 2.9, 6.1, 1, ""), ("chloride", 94, 112, 0, ""),
    ("creatinine", 0.6, 3.8, 1, ""), ("glucose", 62, 410, 0, ""),
    ("hemoglobin", 6.8, 16.4, 1, "grams per deciliter"),
    ("white blood cell count", 2.8, 19.6, 1, "thousand"), ("platelets", 88, 460, 0, "thousand"),
    ("lactate", 0.7, 5.2, 1, ""), ("magnesium", 1.2, 2.6, 1, ""),
    ("hemoglobin A one C", 5.3, 12.4, 1, "percent"), ("ferritin", 8, 640, 0, ""),
    ("B type natriuretic peptide", 40, 2600, 0, ""), ("calcium", 7.6, 11.4, 1, ""),
    ("alanine aminotransferase", 11, 260, 0, ""), ("albumin", 2.1, 4.8, 1, ""),
)
DIAGNOSES = ("community acquired pneumonia", "acute on chronic systolic heart failure",
             "cellulitis of the left lower extremity", "uncontrolled type two diabetes",
             "acute kidney injury, likely prerenal", "symptomatic anemia",
             "new onset atrial fibrillation with rapid ventricular response",
             "lumbar radiculopathy", "acute gout flare of the right first toe",
             "exacerbation of chronic obstructive pulmonary disease", "iron deficiency",
             "viral gastroenteritis with mild dehydration", "essential hypertension",
             "streptococcal pharyngitis", "acute otitis media", "left ankle sprain")
STATUSES = ("improving on the current regimen", "not yet at goal", "newly diagnosed today",
            "stable since the last visit", "worse over the past week",
            "slowly improving", "complicated by poor follow up")
PLAN_ACTIONS = ("obtain a complete blood count and a basic metabolic panel",
                "order a repeat chest x ray in six weeks",
                "start physical therapy twice a week",
                "refer to cardiology for a stress test",
                "check a fasting lipid panel in three months",
                "encourage oral fluids and rest",
                "arrange an outpatient sleep study",
                "consult nephrology for the rising creatinine",
                "repeat the electrolytes in the morning",
                "schedule a screening colonoscopy",
                "apply a splint and give crutches",
                "place a referral to the diabetes educator",
                "obtain blood cultures before the first antibiotic dose",
                "keep the patient nothing by mouth after midnight",
                "recheck the thyroid stimulating hormone in six weeks",
                "send a urine culture and start empiric therapy")
FOLLOW_UP_WITH = ("primary care", "the orthopedic clinic", "endocrinology", "this clinic",
                  "the wound care nurse", "gastroenterology", "the anticoagulation clinic",
                  "pulmonology")
WARNINGS = ("the symptoms get worse", "the fever comes back", "there is any bleeding",
            "the redness spreads", "the chest pain returns", "there is new weakness",
            "she cannot keep fluids down", "he feels faint")
UNITS_OF_TIME = (("days", (3, 5, 7, 10)), ("weeks", (2, 3, 4, 6, 8)), ("months", (2, 3, 6)))
REACTIONS = ("hives", "swelling of the lips", "a severe rash", "wheezing", "vomiting",
             "anaphylaxis")
ALLERGENS = ("penicillin", "sulfa drugs", "codeine", "latex", "shellfish", "iodinated contrast",
             "amoxicillin", "morphine")


def _dose_words(dose: float) -> str:
    return number_words(int(dose)) if float(dose).is_integer() else decimal_words(dose, 3)


def _pick(rng: random.Random, items: Sequence):
    return items[rng.randrange(len(items))]


def join_list(items: Sequence[str]) -> str:
    """``a``; ``a and b``; ``a, b, and c``."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _he_she(rng: random.Random) -> tuple[str, str]:
    return ("he", "man") if rng.random() < 0.5 else ("she", "woman")


def s_medication(rng: random.Random) -> str:
    drug = _pick(rng, DRUGS)
    dose = f"{_dose_words(_pick(rng, drug.doses))} {drug.unit}"
    order = f"{drug.name} {dose} {_pick(rng, drug.routes)} {_pick(rng, drug.frequencies)}"
    indication = f" for {_pick(rng, drug.indications)}" if drug.indications else ""
    form = rng.randrange(6)
    if form == 0:
        return f"Start {order}{indication}."
    if form == 1:
        return f"Continue {order}."
    if form == 2:
        return f"Increase {drug.name} to {dose} {_pick(rng, drug.frequencies)}{indication}."
    if form == 3:
        return f"Stop {drug.name} because of {_pick(rng, SIDE_EFFECTS)}."
    if form == 4 and drug.routes == ("by mouth",):
        count = _pick(rng, (14, 20, 28, 30, 60, 90))
        refills = _pick(rng, ("no refills", "one refill", "two refills", "three refills"))
        return f"Prescribe {order}, dispense {number_words(count)}, {refills}."
    return f"{order[0].upper()}{order[1:]}{indication}."


def s_vitals(rng: random.Random) -> str:
    systolic, diastolic = rng.randint(92, 188), rng.randint(52, 112)
    heart, breath = rng.randint(48, 134), rng.randint(12, 30)
    saturation = rng.randint(86, 100)
    oxygen = _pick(rng, ("on room air", "on two liters by nasal cannula", "on four liters"))
    form = rng.randrange(4)
    if form == 0:
        return (f"Blood pressure is {number_words(systolic)} over {number_words(diastolic)} "
                f"with a heart rate of {number_words(heart)}.")
    if form == 1:
        return (f"Vital signs: heart rate {number_words(heart)}, respiratory rate "
                f"{number_words(breath)}, and oxygen saturation {number_words(saturation)} "
                f"percent {oxygen}.")
    if form == 2:
        temperature = rng.randint(968, 1034) / 10
        return (f"Temperature is {decimal_words(temperature)} degrees Fahrenheit and the "
                f"pulse is {number_words(heart)}.")
    weight = rng.randint(48, 142)
    return (f"Weight today is {number_words(weight)} kilograms, "
            f"{_pick(rng, ('down', 'up'))} {number_words(rng.randint(2, 9))} kilograms "
            "from the last visit.")


def _lab(rng: random.Random) -> str:
    name, low, high, places, unit = _pick(rng, LAB_RANGES)
    value = round(rng.uniform(low, high), places)
    spoken = decimal_words(value, places) if places else number_words(int(value))
    return f"{name} {spoken}" + (f" {unit}" if unit else "")


def s_labs(rng: random.Random) -> str:
    labs: list[str] = []
    while len(labs) < rng.randint(2, 3):
        lab = _lab(rng)
        if lab.split()[0] not in {item.split()[0] for item in labs}:
            labs.append(lab)
    intro = _pick(rng, ("Labs today show", "Morning labs:", "Laboratory results include",
                        "Repeat labs show"))
    return f"{intro} {join_list(labs)}."


def s_history(rng: random.Random) -> str:
    pronoun, noun = _he_she(rng)
    age = rng.randint(19, 94)
    first, second = rng.sample(CONDITIONS, 2)
    form = rng.randrange(3)
    if form == 0:
        return (f"This is a {number_words(age)} year old {noun} with {first} and {second} "
                f"who presents with {_pick(rng, DURATIONS)} of {_pick(rng, SYMPTOMS)}.")
    if form == 1:
        return (f"{pronoun.capitalize()} reports {_pick(rng, SYMPTOMS)} for "
                f"{_pick(rng, DURATIONS)}.")
    return f"Past medical history is notable for {first}, {second}, and {_pick(rng, CONDITIONS)}."


def s_exam(rng: random.Random) -> str:
    finding = _pick(rng, EXAM_FINDINGS)
    intro = _pick(rng, ("On examination,", "On exam,", "Physical examination shows that",
                        "Today"))
    return f"{intro} {finding}."


def s_imaging(rng: random.Random) -> str:
    study, findings = _pick(rng, IMAGING)
    verb = _pick(rng, ("shows", "demonstrates", "is notable for"))
    return f"{study} {verb} {_pick(rng, findings)}."


def s_ekg(rng: random.Random) -> str:
    rhythm = _pick(rng, ("sinus rhythm", "sinus tachycardia", "atrial fibrillation",
                         "sinus bradycardia"))
    extra = _pick(rng, ("no acute ST changes", "a right bundle branch block",
                        "T wave inversions in the lateral leads", "left ventricular hypertrophy"))
    return (f"The EKG shows {rhythm} at a rate of {number_words(rng.randint(44, 148))} "
            f"with {extra}.")


def s_assessment(rng: random.Random) -> str:
    intro = _pick(rng, ("Assessment:", "Impression:", "Working diagnosis:"))
    return f"{intro} {_pick(rng, DIAGNOSES)}, {_pick(rng, STATUSES)}."


def s_plan(rng: random.Random) -> str:
    actions = rng.sample(PLAN_ACTIONS, rng.randint(1, 3))
    return f"{_pick(rng, ('Plan:', 'We will', 'The plan is to'))} {join_list(actions)}."


def s_follow_up(rng: random.Random) -> str:
    unit, counts = _pick(rng, UNITS_OF_TIME)
    when = f"{number_words(_pick(rng, counts))} {unit}"
    sooner = f", or sooner if {_pick(rng, WARNINGS)}" if rng.random() < 0.6 else ""
    return f"Follow up with {_pick(rng, FOLLOW_UP_WITH)} in {when}{sooner}."


def s_identifier(rng: random.Random) -> str:
    name = f"{_pick(rng, FIRST_NAMES)} {_pick(rng, LAST_NAMES)}"
    form = rng.randrange(3)
    if form == 0:
        month, day, year = _pick(rng, MONTHS), rng.randint(1, 28), rng.randint(1931, 2006)
        return (f"Patient {name}, date of birth {month} {ordinal_words(day)}, "
                f"{year_words(year)}, is seen today for {_pick(rng, DIAGNOSES)}.")
    if form == 1:
        record = "".join(str(rng.randrange(10)) for _ in range(8))
        return f"Note for {name}, medical record number {digits_words(record)}."
    area, line = f"{rng.randint(201, 989)}", f"01{rng.randint(10, 99)}"
    return (f"{name} can be reached at {digits_words(area)}, five five five, "
            f"{digits_words(line)}.")


def s_allergy_social(rng: random.Random) -> str:
    pronoun, _noun = _he_she(rng)
    form = rng.randrange(3)
    if form == 0:
        return (f"{pronoun.capitalize()} is allergic to {_pick(rng, ALLERGENS)}, which caused "
                f"{_pick(rng, REACTIONS)}.")
    if form == 1:
        return (f"{pronoun.capitalize()} quit smoking {number_words(rng.randint(2, 30))} years "
                f"ago after a {number_words(rng.randint(10, 60))} pack year history.")
    return (f"{pronoun.capitalize()} drinks {number_words(rng.randint(1, 6))} glasses of wine a "
            f"week and does not use recreational drugs.")


GENERATORS: tuple[Callable[[random.Random], str], ...] = (
    s_medication, s_medication, s_vitals, s_labs, s_history, s_exam, s_imaging, s_ekg,
    s_assessment, s_plan, s_follow_up, s_identifier, s_allergy_social,
)
# A note's order, used for the long recording's sections.
NOTE_ORDER: tuple[Callable[[random.Random], str], ...] = (
    s_identifier, s_history, s_history, s_allergy_social, s_vitals, s_exam, s_exam, s_labs,
    s_imaging, s_ekg, s_assessment, s_medication, s_medication, s_plan, s_follow_up,
)


def split_sentences(text: str) -> list[str]:
    """Sentences of a reference text (split after ``.``, ``?`` or ``!``)."""
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+", text) if part.strip()]


class SentenceSource:
    """Sentences from the grammar, none of them in ``forbidden`` or given before."""

    def __init__(self, rng: random.Random, forbidden: set[str]):
        self.rng = rng
        self.forbidden = forbidden
        self.used: set[str] = set()

    def take(self, generator: Optional[Callable[[random.Random], str]] = None) -> str:
        for _attempt in range(1000):
            sentence = (generator or _pick(self.rng, GENERATORS))(self.rng)
            key = normalize(sentence)
            if key not in self.forbidden and key not in self.used:
                self.used.add(key)
                return sentence
        raise RuntimeError("the grammar ran out of new sentences")


def shared_sentences(shared_eval: Path) -> set[str]:
    """Normalised sentences (and whole texts) of every ``manifest.jsonl`` under ``shared_eval``."""
    found: set[str] = set()
    for manifest in sorted(shared_eval.glob("*/manifest.jsonl")):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            texts = [entry.get("text", "")] + [s.get("text", "") for s in entry.get("segments", [])]
            for text in texts:
                found.add(normalize(text))
                found.update(normalize(sentence) for sentence in split_sentences(text))
    found.discard("")
    return found


# --------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice with its speed (words per minute) and pitch (0-99)."""

    name: str
    wpm: int
    pitch: int


def pick_voice(rng: random.Random, name: Optional[str] = None) -> Voice:
    return Voice(name or _pick(rng, VOICES), rng.randint(140, 185), rng.randint(30, 70))


def jitter(rng: random.Random, voice: Voice) -> Voice:
    """The same voice, speed and pitch moved a little (one speaker, sentence to sentence)."""
    return Voice(voice.name, max(120, voice.wpm + rng.randint(-8, 8)),
                 min(99, max(0, voice.pitch + rng.randint(-4, 4))))


def synthesize(text: str, voice: Voice) -> bytes:
    """16 kHz mono signed 16-bit little-endian PCM of ``text`` (espeak-ng piped into sox)."""
    espeak = subprocess.Popen(
        ["espeak-ng", "-v", voice.name, "-s", str(voice.wpm), "-p", str(voice.pitch),
         "--stdout", text],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # -R: sox dithers when it resamples, with noise seeded from the clock
    # unless told to repeat itself; the sets must come out the same every time.
    sox = subprocess.run(
        ["sox", "-q", "-R", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
         "-e", "signed-integer", "-L", "-"],
        stdin=espeak.stdout, capture_output=True, check=False)
    espeak.stdout.close()
    espeak_err = espeak.stderr.read().decode(errors="replace")
    espeak.stderr.close()
    if espeak.wait() != 0 or sox.returncode != 0 or not sox.stdout:
        raise RuntimeError(f"synthesis failed for voice {voice.name}: "
                           f"{espeak_err.strip()} {sox.stderr.decode(errors='replace').strip()}")
    return sox.stdout


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(round(seconds * SAMPLE_RATE))


def pcm_seconds(pcm: bytes) -> float:
    return len(pcm) / (2 * SAMPLE_RATE)


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)


@dataclass
class Recording:
    """Sentences spoken one after another with pauses, and where each one lies."""

    pcm: bytearray = field(default_factory=bytearray)
    segments: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return pcm_seconds(self.pcm)

    @property
    def text(self) -> str:
        return " ".join(segment["text"] for segment in self.segments)

    def add(self, text: str, voice: Voice, pause: float) -> None:
        if self.segments:
            self.pcm += silence(pause)
        start = self.seconds
        self.pcm += synthesize(text, voice)
        self.segments.append({"start": round(start, 3), "end": round(self.seconds, 3),
                              "text": text, "voice": voice.name, "wpm": voice.wpm,
                              "pitch": voice.pitch})


# --------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------


def fresh_folder(folder: Path) -> Path:
    """``folder``, emptied of what an earlier run left (WAV files, manifest, SOURCES.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("*.wav")) + [folder / "manifest.jsonl", folder / "SOURCES.md"]:
        if old.exists():
            old.unlink()
    return folder


def write_manifest(folder: Path, entries: Iterable[dict]) -> list[dict]:
    entries = list(entries)
    with open(folder / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for entry in entries:
            manifest.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entries


def make_short(folder: Path, count: int, rng: random.Random, source: SentenceSource) -> list[dict]:
    """``count`` dictations of one to three sentences, 3 to 20 s, one voice each."""
    fresh_folder(folder)
    entries = []
    for index in range(1, count + 1):
        voice = pick_voice(rng, VOICES[(index - 1) % len(VOICES)])
        for _attempt in range(20):
            sentences = [source.take() for _ in range(rng.choice((1, 1, 2, 2, 3)))]
            text = " ".join(sentences)
            pcm = synthesize(text, voice)
            if 3.0 <= pcm_seconds(pcm) <= 20.0:
                break
            for sentence in sentences:  # not used after all: free them again
                source.used.discard(normalize(sentence))
        else:
            raise RuntimeError(f"no 3-20 s dictation for short_{index:03d}")
        name = f"short_{index:03d}.wav"
        write_wav(folder / name, pcm)
        entries.append({"audio": name, "text": text, "seconds": round(pcm_seconds(pcm), 3),
                        "voice": voice.name, "wpm": voice.wpm, "pitch": voice.pitch,
                        "sentences": len(sentences), "phi": []})
    return write_manifest(folder, entries)


def mixed_targets(count: int, rng: random.Random, low: float = 3.0,
                  high: float = 300.0) -> list[float]:
    """``count`` target lengths spread log-uniformly over [low, high], both ends included."""
    if count == 1:
        return [low]
    steps = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    rng.shuffle(steps)
    return steps


def make_mixed(folder: Path, count: int, rng: random.Random,
               source: SentenceSource) -> list[dict]:
    """``count`` recordings from 3 s to 5 min: sentences with pauses, one or two speakers."""
    fresh_folder(folder)
    entries = []
    for index, target in enumerate(mixed_targets(count, rng), start=1):
        speakers = [pick_voice(rng)]
        if target > 60 and rng.random() < 0.4:  # a second speaker now and then
            speakers.append(pick_voice(rng, _pick(rng, [v for v in VOICES
                                                        if v != speakers[0].name])))
        recording = Recording()
        while recording.seconds < target - 1.5 or recording.seconds < 3.0:
            speaker = speakers[0] if len(speakers) == 1 or rng.random() < 0.7 else speakers[1]
            recording.add(source.take(), jitter(rng, speaker), rng.uniform(0.3, 1.2))
        name = f"mixed_{index:03d}.wav"
        write_wav(folder / name, bytes(recording.pcm))
        entries.append({"audio": name, "text": recording.text,
                        "seconds": round(recording.seconds, 3),
                        "voice": "/".join(v.name for v in speakers),
                        "wpm": speakers[0].wpm, "pitch": speakers[0].pitch,
                        "target_seconds": round(target, 1), "segments": recording.segments})
    return write_manifest(folder, entries)


def make_long(folder: Path, minutes: float, count: int, rng: random.Random,
              source: SentenceSource) -> list[dict]:
    """``count`` recordings of about ``minutes`` each: clinical notes one after another.

    Each note (a section: identifier, history, examination, results, assessment,
    plan, follow-up) is read by one voice; pauses are 0.3 to 1.2 s, and 2 s
    between notes. No sentence recurs across the recordings. One recording is
    ``long_<M>min.wav``; several are ``long_<M>min_01.wav`` and so on, the first
    of them the same as the single one for the same seed.
    """
    fresh_folder(folder)
    entries = []
    for index in range(1, count + 1):
        recording, notes = long_recording(minutes, rng, source)
        name = f"long_{minutes:g}min.wav" if count == 1 else f"long_{minutes:g}min_{index:02d}.wav"
        write_wav(folder / name, bytes(recording.pcm))
        voices_used = list(dict.fromkeys(segment["voice"] for segment in recording.segments))
        entries.append({"audio": name, "text": recording.text,
                        "seconds": round(recording.seconds, 3), "voice": "/".join(voices_used),
                        "notes": notes, "segments": recording.segments})
    return write_manifest(folder, entries)


def long_recording(minutes: float, rng: random.Random,
                   source: SentenceSource) -> tuple[Recording, int]:
    """One long recording of notes, and how many notes it holds."""
    recording = Recording()
    target = minutes * 60
    voices = list(VOICES)
    rng.shuffle(voices)
    note = 0
    while recording.seconds < target:
        voice = pick_voice(rng, voices[note % len(voices)])
        for position, generator in enumerate(NOTE_ORDER):
            if recording.seconds >= target:
                break
            pause = 2.0 if position == 0 and recording.segments else rng.uniform(0.3, 1.2)
            recording.add(source.take(generator), jitter(rng, voice), pause)
        note += 1
    return recording, note


def make_real(folder: Path, source_dir: Path, shared_eval: Path) -> list[dict]:
    """Real-speech clips listed in ``source_dir/clips.jsonl``, converted with sox."""
    listing = source_dir / "clips.jsonl"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found (see the module documentation)")
    taken_names, taken_texts = set(), set()
    shared_real = shared_eval / "real" / "manifest.jsonl"
    if shared_real.is_file():
        for line in shared_real.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                taken_names.add(Path(entry["audio"]).stem)
                taken_texts.add(normalize(entry["text"]))
    fresh_folder(folder)
    entries = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        clip = json.loads(line)
        if clip["name"] in taken_names or normalize(clip["text"]) in taken_texts:
            raise ValueError(f"{clip['name']} is already in {shared_real}")
        name = f"{clip['name']}.wav"
        subprocess.run(["sox", "-q", "-R", "-G", str(source_dir / clip["file"]), "-r", str(SAMPLE_RATE),
                        "-c", "1", "-b", "16", "-e", "signed-integer", str(folder / name)],
                       check=True)
        with wave.open(str(folder / name), "rb") as audio:
            seconds = audio.getnframes() / audio.getframerate()
        entry = {"audio": name, "text": clip["text"], "seconds": round(seconds, 3)}
        entry.update({key: clip[key] for key in ("source", "corpus", "license", "speaker",
                                                  "notes") if key in clip})
        entries.append(entry)
    if (source_dir / "SOURCES.md").is_file():
        shutil.copyfile(source_dir / "SOURCES.md", folder / "SOURCES.md")
    return write_manifest(folder, entries)


# --------------------------------------------------------------------------
# Checks and summary
# --------------------------------------------------------------------------


def check_sentences(sets: dict[str, list[dict]], forbidden: set[str]) -> list[str]:
    """Problems: a synthetic sentence equal to a shared one, or used twice."""
    problems, seen = [], {}
    for set_name, entries in sets.items():
        if set_name == "real":
            continue
        for entry in entries:
            for sentence in split_sentences(entry["text"]):
                key = normalize(sentence)
                where = f"{set_name}/{entry['audio']}"
                if key in forbidden:
                    problems.append(f"{where}: in ../shared/eval: {sentence!r}")
                if key in seen:
                    problems.append(f"{where}: also in {seen[key]}: {sentence!r}")
                seen.setdefault(key, where)
    return problems


def summary(entries: Sequence[dict]) -> dict:
    seconds = [entry["seconds"] for entry in entries]
    voices: dict[str, int] = {}
    for entry in entries:
        for voice in str(entry.get("voice", entry.get("corpus", "?"))).split("/"):
            voices[voice] = voices.get(voice, 0) + 1
    return {"files": len(entries), "total_seconds": round(sum(seconds), 1),
            "min_seconds": min(seconds, default=0.0), "max_seconds": max(seconds, default=0.0),
            "voices": voices}


def espeak_version() -> str:
    try:
        done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                              check=False)
        return done.stdout.split("Data at")[0].strip()
    except OSError:
        return "unavailable"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Make fresh evaluation sets (short, mixed, long synthetic dictations and "
                    "real speech from a local folder) in ../shared/eval's format.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, metavar="DIR", default=DEFAULT_OUT,
                        help="output folder; one subfolder per set")
    parser.add_argument("--seed", type=int, default=20, help="random seed (texts, voices, pauses)")
    parser.add_argument("--sets", default="short,mixed,long,real",
                        help="comma-separated subset of: " + ", ".join(SET_NAMES))
    parser.add_argument("--short-count", type=int, metavar="N", default=30)
    parser.add_argument("--mixed-count", type=int, metavar="N", default=40)
    parser.add_argument("--long-minutes", type=float, metavar="M", default=20.0)
    parser.add_argument("--long-count", type=int, metavar="N", default=1,
                        help="long recordings to make, each of --long-minutes")
    parser.add_argument("--real-from", type=Path, metavar="DIR", default=None,
                        help="folder with clips.jsonl (and SOURCES.md) of real-speech clips; "
                             "without it the real set is skipped")
    parser.add_argument("--shared-eval", type=Path, metavar="DIR", default=SHARED_EVAL,
                        help="the tuned-on evaluation data whose sentences must not recur")
    args = parser.parse_args(argv)
    args.set_list = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in args.set_list if s not in SET_NAMES]
    if unknown or not args.set_list:
        parser.error(f"--sets: unknown or empty {unknown} (known: {', '.join(SET_NAMES)})")
    if min(args.short_count, args.mixed_count, args.long_count) < 1 or args.long_minutes <= 0:
        parser.error("--short-count, --mixed-count, --long-count and --long-minutes must be "
                     "positive")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    synthetic = [s for s in args.set_list if s != "real"]
    if synthetic and not (shutil.which("espeak-ng") and shutil.which("sox")):
        print("unseen_sets: needs espeak-ng and sox (apt-get install -y espeak-ng sox)",
              file=sys.stderr)
        return 2
    if "real" in args.set_list and args.real_from is None:
        print("unseen_sets: no --real-from DIR, so the real set is skipped", file=sys.stderr)
        args.set_list.remove("real")
    if not args.shared_eval.is_dir():
        print(f"unseen_sets: {args.shared_eval} not found; sentences cannot be checked against "
              "the tuned-on data (pass --shared-eval DIR)", file=sys.stderr)
        return 2
    forbidden = shared_sentences(args.shared_eval)
    overlap = SHARED_DICTATION_VOICES.intersection(VOICES)
    assert not overlap, f"voices of ../shared/eval/dictation in VOICES: {overlap}"

    source = SentenceSource(random.Random(args.seed), forbidden)
    args.out.mkdir(parents=True, exist_ok=True)
    sets: dict[str, list[dict]] = {}
    for set_name in args.set_list:
        folder = args.out / set_name
        print(f"unseen_sets: making {set_name} in {folder} ...", file=sys.stderr, flush=True)
        # Every set draws from its own generator (seeded by the seed and its name);
        # sentences an earlier set used are still refused.
        set_rng = random.Random(f"{args.seed}:{set_name}")
        source.rng = set_rng
        if set_name == "short":
            sets[set_name] = make_short(folder, args.short_count, set_rng, source)
        elif set_name == "mixed":
            sets[set_name] = make_mixed(folder, args.mixed_count, set_rng, source)
        elif set_name == "long":
            sets[set_name] = make_long(folder, args.long_minutes, args.long_count, set_rng,
                                       source)
        else:
            sets[set_name] = make_real(folder, args.real_from, args.shared_eval)

    problems = check_sentences(sets, forbidden)
    for problem in problems:
        print(f"unseen_sets: {problem}", file=sys.stderr)
    info = {"seed": args.seed, "espeak_ng": espeak_version(), "sample_rate": SAMPLE_RATE,
            "shared_eval": str(args.shared_eval), "shared_sentences_checked": len(forbidden),
            "real_from": str(args.real_from) if args.real_from else None,
            "sets": {name: summary(entries) for name, entries in sets.items()}}
    (args.out / "sets.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for name, entries in sets.items():
        stats = info["sets"][name]
        print(f"{name:6} {stats['files']:3} file(s), {stats['total_seconds']:8.1f} s "
              f"({stats['min_seconds']:.1f}-{stats['max_seconds']:.1f} s), voices: "
              + ", ".join(f"{v} x{n}" for v, n in sorted(stats["voices"].items())))
    print(f"written to {args.out} (seed {args.seed}, {info['espeak_ng']}); "
          f"{len(forbidden)} shared sentences checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
