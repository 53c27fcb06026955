"""Functions the offline task YAMLs reference with ``!function utils.<name>``.

lm-eval imports this file from the include directory the harness writes at run time, so it depends on
nothing but the standard library and ``datasets``. The MATH answer normalisation is copied from
lm-eval 0.4.13 ``tasks/minerva_math/utils.py`` (MIT; there: "copied character for character from appendix D
of Lewkowycz et al. (2022)"), because importing that module needs lm-eval's optional math extra (sympy,
``antlr4-python3-runtime==4.11``, ``math-verify``) and boxed EM must run without it. lm-eval's own equivalence
checks (``is_equiv``, ``math_verify``) are scored beside EM by :mod:`coloc_ray.evaluation.math_equiv`.
"""

from __future__ import annotations

import random
import re

# --- GPQA (mirrors gpqa/zeroshot/utils.py) ---------------------------------------------------------------


def _gpqa_clean(text):
    if text is None:
        return " "
    text = text.strip().replace(" [title]", ". ")
    return text.replace("  ", " ")


def process_gpqa(dataset):
    """Shuffle the four answers as lm-eval's GPQA task does, but with a fixed seed per item.

    lm-eval shuffles with the global ``random`` state, so an item's choice order depends on which items came
    before it; seeding by the item's Record ID keeps the order identical under ``--limit`` and across runs.
    """
    def _doc(doc):
        choices = [_gpqa_clean(doc[k]) for k in
                   ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3", "Correct Answer")]
        random.Random(f"gpqa:{doc['item_id']}").shuffle(choices)
        idx = choices.index(_gpqa_clean(doc["Correct Answer"]))
        return {"choice1": choices[0], "choice2": choices[1], "choice3": choices[2], "choice4": choices[3],
                "answer": f"({chr(65 + idx)})"}

    return dataset.map(_doc)


# --- MATH (mirrors minerva_math/utils.py) ----------------------------------------------------------------

# The 4-shot prompt of Lewkowycz et al. (2022), as shipped in lm-eval's minerva_math task (MATH train-split
# problems). data.load_math drops any test item equal to one of them (none is, in the shared copy).
MATH_FEWSHOT = [
    {"problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "solution": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",  # noqa: E501
     "few_shot": "1"},
    {"problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "solution": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",  # noqa: E501
     "few_shot": "1"},
    {"problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times must Terrell lift them in order to lift the same total weight?",  # noqa: E501
     "solution": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",  # noqa: E501
     "few_shot": "1"},
    {"problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",  # noqa: E501
     "solution": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",  # noqa: E501
     "few_shot": "1"},
]


def math_fewshot_samples() -> list[dict]:
    return [dict(s) for s in MATH_FEWSHOT]


def math_doc_to_text(doc: dict) -> str:
    return "Problem:" + "\n" + doc["problem"] + "\n\n" + "Solution:"


def process_math(dataset):
    def _doc(doc):
        return {"answer": normalize_final_answer(remove_boxed(last_boxed_only_string(doc["solution"])))}

    return dataset.map(_doc)


def math_answer(text: str) -> str:
    """The model's final answer: its last ``\\boxed{...}`` (METHOD 8), else Minerva's "final answer is X"."""
    boxed = last_boxed_only_string(text)
    if boxed is not None:
        try:
            return normalize_final_answer(remove_boxed(boxed))
        except AssertionError:
            pass
    match = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
                      text + "I hope it is correct.")
    return normalize_final_answer(match.group(1).strip()) if match else "[invalidanswer]"


def math_process_results(doc: dict, results: list[str]) -> dict[str, int]:
    """Boxed EM: exact match of the normalised final answers (lm-eval's sympy/Math-Verify equivalence is scored
    beside it by coloc_ray.evaluation.math_equiv, from the logged samples)."""
    pred = math_answer(results[0])
    return {"exact_match": int(bool(pred) and pred == doc["answer"])}


def last_boxed_only_string(string: str) -> str | None:
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    depth, i = 0, idx
    while i < len(string):
        if string[i] == "{":
            depth += 1
        if string[i] == "}":
            depth -= 1
            if depth == 0:
                return string[idx: i + 1]
        i += 1
    return None


def remove_boxed(s: str | None) -> str:
    if s is None:
        return ""
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    assert s.startswith("\\boxed{") and s.endswith("}")
    return s[len("\\boxed{"): -1]


SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"',
    "\\dots",
]


def normalize_final_answer(final_answer: str) -> str:
    """Normalise a final answer (Lewkowycz et al. 2022, appendix D; lm-eval 0.4.13's version)."""
    final_answer = final_answer.split("=")[-1]
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            final_answer = re.sub(rf"(?<!\\)\b{expr}\b", "", final_answer)
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", final_answer)
            for i in range(0, len(segments), 2):
                segments[i] = segments[i].replace(expr, "")
            final_answer = "".join(segments)
        else:
            final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer
