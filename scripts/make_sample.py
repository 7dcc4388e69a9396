"""Writes examples/data/sample.jsonl: a small synthetic, MedMCQA-shaped set of questions that the
quickstart trains on when no MedMCQA data is configured. Every question asks a textbook fact
from the table below, options shuffled, so a model can learn it; it is NOT MedMCQA data.

usage: python3 scripts/make_sample.py [N] > examples/data/sample.jsonl   (stdlib only)
"""
import json
import random
import sys

FACTS = {
    "Biochemistry": ("Deficiency of which vitamin causes {}?", {
        "scurvy": "Vitamin C", "rickets": "Vitamin D", "beriberi": "Thiamine", "pellagra": "Niacin",
        "night blindness": "Vitamin A", "megaloblastic anaemia": "Vitamin B12",
    }),
    "Pharmacology": ("Which drug is the antidote for {} poisoning?", {
        "paracetamol": "N-acetylcysteine", "opioid": "Naloxone", "benzodiazepine": "Flumazenil",
        "organophosphate": "Atropine", "heparin": "Protamine sulphate", "warfarin": "Vitamin K",
    }),
    "Microbiology": ("Which organism causes {}?", {
        "tuberculosis": "Mycobacterium tuberculosis", "syphilis": "Treponema pallidum",
        "cholera": "Vibrio cholerae", "typhoid": "Salmonella typhi", "leprosy": "Mycobacterium leprae",
        "diphtheria": "Corynebacterium diphtheriae",
    }),
    "Anatomy": ("Which nerve supplies the {}?", {
        "deltoid": "Axillary nerve", "diaphragm": "Phrenic nerve", "biceps brachii": "Musculocutaneous nerve",
        "serratus anterior": "Long thoracic nerve", "trapezius": "Accessory nerve", "gluteus maximus": "Inferior gluteal nerve",
    }),
}


def main(n: int) -> None:
    rng = random.Random(2024)
    subjects = sorted(FACTS)
    for i in range(n):
        subject = subjects[i % len(subjects)]
        template, table = FACTS[subject]
        topic = rng.choice(sorted(table))
        answer = table[topic]
        options = [answer] + rng.sample(sorted(v for v in table.values() if v != answer), 3)
        rng.shuffle(options)
        row = {"id": f"sample-{i:04d}", "question": template.format(topic), "opa": options[0], "opb": options[1],
               "opc": options[2], "opd": options[3], "cop": options.index(answer) + 1, "choice_type": "single",
               "exp": "", "subject_name": subject, "topic_name": ""}
        print(json.dumps(row))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
