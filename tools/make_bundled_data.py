"""Writes the bundled data of the embedded default: deterministic, committed, checked in CI.

Outputs
- forgetbench/builtin/pretrain.jsonl  the general corpus the tiny model is pretrained on
- suites/data/medical_{train,eval}.jsonl   target task: drug -> indication
- suites/data/{capitals,addition,code}_eval.jsonl  general tasks (qa, math, code)
- suites/data/general_replay.jsonl     replay pool for data mixing, disjoint from every eval item
- suites/data/medical_validation.jsonl held-out drugs for the validation loss (early stopping)
- suites/data/general_heldout.jsonl    held-out general text for the in-training forgetting curve

The target facts are real: drugs grouped by their USAN/INN stem (-olol, -statin, -triptan ...),
each with its main indication. A stem carries the drug class, so a model that learns the
training drugs can answer for the held-out ones: the eval split measures learning, not recall.

Usage: python tools/make_bundled_data.py [--check]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 1234

# stem -> (indication, drugs). Main indications, as a drug reference would list them.
DRUG_STEMS: dict[str, tuple[str, list[str]]] = {
    "olol": ("high blood pressure", ["atenolol", "metoprolol", "propranolol", "bisoprolol", "nadolol", "nebivolol"]),
    "pril": ("high blood pressure", ["lisinopril", "enalapril", "ramipril", "captopril", "benazepril", "quinapril"]),
    "sartan": ("high blood pressure", ["losartan", "valsartan", "irbesartan", "candesartan", "olmesartan", "telmisartan"]),
    "statin": ("high cholesterol", ["atorvastatin", "simvastatin", "rosuvastatin", "pravastatin", "lovastatin", "fluvastatin", "pitavastatin"]),
    "prazole": ("acid reflux", ["omeprazole", "esomeprazole", "lansoprazole", "pantoprazole", "rabeprazole", "dexlansoprazole"]),
    "tidine": ("stomach ulcers", ["famotidine", "cimetidine", "nizatidine", "ranitidine"]),
    "conazole": ("fungal infections", ["fluconazole", "itraconazole", "ketoconazole", "voriconazole", "posaconazole", "isavuconazole", "efinaconazole"]),
    "cillin": ("bacterial infections", ["amoxicillin", "ampicillin", "dicloxacillin", "piperacillin", "nafcillin", "oxacillin"]),
    "floxacin": ("bacterial infections", ["ciprofloxacin", "levofloxacin", "moxifloxacin", "ofloxacin", "norfloxacin", "delafloxacin"]),
    "ciclovir": ("herpes infections", ["acyclovir", "valacyclovir", "famciclovir", "penciclovir", "ganciclovir", "valganciclovir"]),
    "navir": ("HIV", ["ritonavir", "darunavir", "atazanavir", "lopinavir", "saquinavir", "indinavir", "nelfinavir", "tipranavir"]),
    "triptan": ("migraine", ["sumatriptan", "rizatriptan", "zolmitriptan", "naratriptan", "eletriptan", "almotriptan", "frovatriptan"]),
    "setron": ("nausea", ["ondansetron", "granisetron", "palonosetron", "dolasetron", "tropisetron"]),
    "gliptin": ("type 2 diabetes", ["sitagliptin", "saxagliptin", "linagliptin", "alogliptin", "vildagliptin"]),
    "gliflozin": ("type 2 diabetes", ["empagliflozin", "dapagliflozin", "canagliflozin", "ertugliflozin"]),
    "dronate": ("osteoporosis", ["alendronate", "risedronate", "ibandronate", "minodronate"]),
    "lukast": ("asthma", ["montelukast", "zafirlukast", "pranlukast"]),
    "terol": ("asthma", ["albuterol", "salmeterol", "formoterol", "levalbuterol"]),
    "tinib": ("cancer", ["imatinib", "gefitinib", "erlotinib", "dasatinib", "nilotinib", "lapatinib", "sunitinib", "afatinib"]),
    "azepam": ("anxiety", ["diazepam", "lorazepam", "clonazepam", "oxazepam", "prazepam"]),
    "pramine": ("depression", ["imipramine", "desipramine", "trimipramine", "lofepramine"]),
    "parin": ("blood clots", ["heparin", "enoxaparin", "dalteparin", "tinzaparin"]),
    "xaban": ("blood clots", ["rivaroxaban", "apixaban", "edoxaban", "betrixaban"]),
    "profen": ("pain", ["ibuprofen", "ketoprofen", "flurbiprofen", "dexketoprofen", "fenoprofen"]),
    "tadine": ("allergies", ["loratadine", "desloratadine", "olopatadine", "rupatadine"]),
    "afil": ("erectile dysfunction", ["sildenafil", "tadalafil", "vardenafil", "avanafil"]),
    "osin": ("enlarged prostate", ["tamsulosin", "alfuzosin", "silodosin", "doxazosin", "terazosin"]),
}

# More real drugs of some stems, never trained on nor evaluated: the validation rows that
# early stopping watches (held-out target data, as the eval split is held-out drugs too).
VALIDATION_DRUGS: dict[str, list[str]] = {
    "olol": ["pindolol", "acebutolol"], "pril": ["fosinopril", "perindopril", "trandolapril"],
    "sartan": ["eprosartan", "azilsartan"], "tidine": ["roxatidine"],
    "conazole": ["miconazole", "sertaconazole", "oxiconazole"],
    "cillin": ["carbenicillin", "ticarcillin", "cloxacillin"],
    "floxacin": ["gatifloxacin", "gemifloxacin"], "navir": ["fosamprenavir", "amprenavir"],
    "setron": ["ramosetron"], "gliptin": ["teneligliptin", "gemigliptin"],
    "gliflozin": ["ipragliflozin", "tofogliflozin"], "tinib": ["bosutinib", "ponatinib", "axitinib"],
    "azepam": ["bromazepam"], "pramine": ["clomipramine"], "parin": ["nadroparin", "bemiparin"],
    "profen": ["loxoprofen", "dexibuprofen"], "afil": ["udenafil", "mirodenafil"],
}
N_HELDOUT = 24  # general held-out rows per kind (math, code): the in-training forgetting curve

# Phrasings of a fact. Training uses all three; the eval asks all three about drugs never trained on.
DRUG_TEMPLATES = [
    ("{Drug} is used to treat", " {condition}"),
    ("Q: What does {drug} treat?\nA:", " {condition}"),
    ("Doctors prescribe {drug} for", " {condition}"),
]

CAPITALS: list[tuple[str, str]] = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Austria", "Vienna"), ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("Czechia", "Prague"),
    ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Iceland", "Reykjavik"), ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Estonia", "Tallinn"),
    ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Turkey", "Ankara"), ("Egypt", "Cairo"),
    ("Morocco", "Rabat"), ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"), ("Senegal", "Dakar"),
    ("Uganda", "Kampala"), ("Angola", "Luanda"), ("Zimbabwe", "Harare"), ("Zambia", "Lusaka"),
    ("Mali", "Bamako"), ("Sudan", "Khartoum"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"), ("South Korea", "Seoul"), ("Mongolia", "Ulaanbaatar"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Jordan", "Amman"), ("Lebanon", "Beirut"),
    ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"), ("Afghanistan", "Kabul"), ("Uzbekistan", "Tashkent"),
    ("Kazakhstan", "Astana"), ("Georgia", "Tbilisi"), ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Jamaica", "Kingston"),
    ("Guatemala", "Guatemala City"), ("Panama", "Panama City"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Argentina", "Buenos Aires"),
    ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"), ("Bolivia", "Sucre"), ("Brazil", "Brasilia"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Fiji", "Suva"), ("Cambodia", "Phnom Penh"),
    ("Laos", "Vientiane"), ("Myanmar", "Naypyidaw"), ("Sri Lanka", "Colombo"), ("Israel", "Jerusalem"),
]
N_CAPITALS_EVAL = 64

# name -> (arity, body). The code task asks for the body of a function from its name and arguments.
CODE_OPS: dict[str, tuple[int, str]] = {
    "add": (2, "{a} + {b}"), "subtract": (2, "{a} - {b}"), "multiply": (2, "{a} * {b}"),
    "divide": (2, "{a} / {b}"), "power": (2, "{a} ** {b}"), "remainder": (2, "{a} % {b}"),
    "maximum": (2, "max({a}, {b})"), "minimum": (2, "min({a}, {b})"), "is_equal": (2, "{a} == {b}"),
    "is_greater": (2, "{a} > {b}"), "is_less": (2, "{a} < {b}"), "average": (2, "({a} + {b}) / 2"),
    "square": (1, "{a} * {a}"), "double": (1, "2 * {a}"), "negate": (1, "-{a}"),
    "half": (1, "{a} / 2"), "is_even": (1, "{a} % 2 == 0"), "is_positive": (1, "{a} > 0"),
    "absolute": (1, "abs({a})"), "length": (1, "len({a})"),
}
ARG_NAMES = list("abcdefghjkmnpqrstuvwxyz")  # no i, l, o: they read as digits
N_CODE_EVAL = 200
N_ADDITION_EVAL = 200
N_REPLAY = 3000


def code_snippet(name: str, args: tuple[str, ...]) -> tuple[str, str]:
    arity, body = CODE_OPS[name]
    fmt = dict(zip("ab", args))
    return f"def {name}({', '.join(args)}):\n    return", " " + body.format(**fmt)


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {}

    # target: drugs, a third of each stem held out for eval
    conditions = sorted({cond for cond, _ in DRUG_STEMS.values()})
    med_train, med_eval = [], []
    for stem, (condition, drugs) in DRUG_STEMS.items():
        drugs = sorted(drugs)
        rng.shuffle(drugs)
        n_eval = max(1, len(drugs) // 3)
        for drug in drugs[:n_eval]:
            for prompt, _ in DRUG_TEMPLATES:
                distractors = rng.sample([c for c in conditions if c != condition], 3)
                choices = distractors + [condition]
                rng.shuffle(choices)
                med_eval.append({"drug": drug, "stem": stem,
                                 "prompt": prompt.format(Drug=drug.capitalize(), drug=drug),
                                 "choices": choices, "answer": choices.index(condition)})
        for drug in drugs[n_eval:]:
            for prompt, completion in DRUG_TEMPLATES:
                med_train.append({"prompt": prompt.format(Drug=drug.capitalize(), drug=drug),
                                  "completion": completion.format(condition=condition) + "\n"})
    out["suites/data/medical_train.jsonl"] = med_train
    out["suites/data/medical_eval.jsonl"] = med_eval

    # qa: capitals. Pretraining knows them all; eval asks about some; replay holds only the others.
    capitals = list(CAPITALS)
    rng.shuffle(capitals)
    eval_caps, other_caps = capitals[:N_CAPITALS_EVAL], capitals[N_CAPITALS_EVAL:]
    all_capital_names = [c for _, c in CAPITALS]
    out["suites/data/capitals_eval.jsonl"] = []
    for country, capital in eval_caps:
        choices = rng.sample([c for c in all_capital_names if c != capital], 3) + [capital]
        rng.shuffle(choices)
        out["suites/data/capitals_eval.jsonl"].append(
            {"country": country, "prompt": f"The capital of {country} is", "choices": choices,
             "answer": choices.index(capital)})

    def capital_docs(pairs):
        return [d for country, capital in pairs for d in
                (f"The capital of {country} is {capital}.", f"{capital} is the capital of {country}.")]

    # math: 2-digit addition; eval pairs never appear in pretraining or replay
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    add_eval, add_rest = pairs[:N_ADDITION_EVAL], pairs[N_ADDITION_EVAL:]
    out["suites/data/addition_eval.jsonl"] = [
        {"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in add_eval]
    addition_docs = [f"{a}+{b}={a + b}" for a, b in add_rest]

    # code: function bodies; eval (name, args) combinations never appear elsewhere
    combos = []
    for name, (arity, _) in CODE_OPS.items():
        for a in ARG_NAMES:
            if arity == 1:
                combos.append((name, (a,)))
            else:
                combos.extend((name, (a, b)) for b in ARG_NAMES if b != a)
    rng.shuffle(combos)
    code_eval, code_rest = combos[:N_CODE_EVAL], combos[N_CODE_EVAL:]
    out["suites/data/code_eval.jsonl"] = []
    for name, args in code_eval:
        prompt, body = code_snippet(name, args)
        out["suites/data/code_eval.jsonl"].append({"prompt": prompt, "answer": body.strip()})
    code_docs = ["".join(code_snippet(name, args)) for name, args in code_rest]

    pretrain = ([{"kind": "qa", "text": t} for t in capital_docs(CAPITALS)]
                + [{"kind": "math", "text": t} for t in addition_docs]
                + [{"kind": "code", "text": t} for t in code_docs])
    out["forgetbench/builtin/pretrain.jsonl"] = pretrain

    replay = ([{"kind": "qa", "text": t} for t in capital_docs(other_caps)]
              + rng.sample([{"kind": "math", "text": t} for t in addition_docs], N_REPLAY // 2)
              + rng.sample([{"kind": "code", "text": t} for t in code_docs], N_REPLAY // 2))
    rng.shuffle(replay)
    out["suites/data/general_replay.jsonl"] = replay

    # added later, with their own generator so the files above stay as they were
    rng2 = random.Random(SEED + 1)
    # one phrasing per drug, the three in turn: small, so evaluating it often stays cheap
    val_drugs = [(stem, drug) for stem, drugs in VALIDATION_DRUGS.items() for drug in drugs]
    out["suites/data/medical_validation.jsonl"] = [
        {"prompt": prompt.format(Drug=drug.capitalize(), drug=drug),
         "completion": completion.format(condition=DRUG_STEMS[stem][0]) + "\n"}
        for i, (stem, drug) in enumerate(val_drugs)
        for prompt, completion in [DRUG_TEMPLATES[i % len(DRUG_TEMPLATES)]]]
    # general text the tiny model was pretrained on but that no replay row or eval item holds
    in_replay = {r["text"] for r in replay}
    heldout = (rng2.sample([{"kind": "math", "text": t} for t in addition_docs if t not in in_replay], N_HELDOUT)
               + rng2.sample([{"kind": "code", "text": t} for t in code_docs if t not in in_replay], N_HELDOUT))
    rng2.shuffle(heldout)
    out["suites/data/general_heldout.jsonl"] = heldout
    return out


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args()
    stale = []
    for rel, rows in build().items():
        path, text = ROOT / rel, render(rows)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.write_text(text)
            print(f"{rel}: {len(rows)} rows")
    if stale:
        print("stale bundled data (run tools/make_bundled_data.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
