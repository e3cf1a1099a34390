"""Model outputs that have hung or exhausted graders: the cases the time bounds of adpo.grading are tested and
benchmarked against. Power towers and huge factorials make sympy evaluate exactly, in C, where only killing the
worker process stops it."""

ADVERSARIAL_OUTPUTS = {
    "power tower": r"The answer is \boxed{9^{9^{9^{9^{9}}}}}",
    "huge factorial": r"\boxed{(10^{10})!}",
    "nested boxes x20000": "\\boxed{" * 20000 + "1" + "}" * 20000,
    "unclosed boxes x50000": "\\boxed{" * 50000,
    "nested fractions x300": "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "1M-digit number": "The answer is " + "9" * 1_000_000,
    "4 MB of text": "a " * 2_000_000,
    "100k dollar signs": "Final Answer: The final answer is " + "$" * 100_000,
}
