"""Graders: table-driven verdicts on real-looking completions, and bounded time on hostile ones."""

import signal
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metajax.data.example import ANSWER_TYPES, Example
from metajax.data.graders import (extract_answer, final_answer_span, grade, grade_example, is_skip,
                                  parse_predicted_level, split_ram_completion)

NATALIA = ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n"
           "#### 72")
# (completion, gold, expected verdict)
NUMERIC = [
    ("#### 42", "42", True),
    (NATALIA, "72", True),
    (NATALIA, "24", False),
    ("#### 5\n\nQuestion: Tom has 7 apples and eats 2.", "5", True),
    ("#### 1,000,000", "1000000", True),
    ("#### $1,200.00", "1200", True),
    ("#### -7", "-7", True),
    ("#### -7", "7", False),
    ("The answer is 42.", "42", True),
    ("The answer is 42.", "24", False),
    ("The answer is: $42", "42", True),
    ("The answer is **42**.", "42", True),
    ("The answer is 1,234.", "1234", True),
    ("The answer is 10.0", "10", True),
    ("The answer is 010", "10", True),
    ("The answer is 0.5", ".5", True),
    ("The answer is .75", "0.75", True),
    ("The answer is 70%", "70", True),
    ("The answer is 3.14159", "3.14", False),
    ("The answer is 5 + 3 = 8.", "8", True),
    ("The answer is 5 + 3 = 8.", "5", False),
    ("The answer is 42 (not 24).", "42", True),
    ("The answer is forty-two.", "42", False),
    ("The answer is 7\nCheck: 3 + 4 = 7, and 7 - 2 = 5", "7", True),
    ("We get 24. Wait, that is wrong; the correct answer is 42.", "42", True),
    ("First 5 apples, then 7 more, so the answer is 12 apples in 3 baskets.", "12", True),
    ("There are 12 apples in 3 baskets.", "12", False),
    ("She earns $18 every day.", "18", True),
    ("She earns $18.00 every day.", "18", True),
    ("She earns $18.00 every day.", "18.5", False),
    ("Total = 3.50 dollars", "3.5", True),
    ("Total = 3.50 dollars", "3.05", False),
    ("Total cost: $ 2,500", "2500", True),
    ("Total cost: 2,50", "250", False),
    ("The profit is 1,000,000 dollars", "1000000", True),
    ("The temperature dropped to -5 degrees.", "-5", True),
    ("The temperature dropped to -5 degrees.", "5", False),
    ("He paid \u221212 dollars", "-12", True),
    ("10-3 = 7", "7", True),
    ("He has 10-3", "-3", False),
    ("It takes 45 minutes.", "45", True),
    ("It takes 45 minutes.", "0.75", False),
    ("x = 2.5 hours, so 150 minutes", "150", True),
    ("She has 1/2 of the cake left, which is 4 slices.", "4", True),
    ("1,2,3 are the numbers and the largest is 3", "3", True),
    ("Let's compute: 2 * 3 = 6. Then 6 + 4 = 10.", "10", True),
    ("Let's compute: 2 * 3 = 6. Then 6 + 4 = 10.", "6", False),
    ("\\boxed{18}", "18", True),
    ("So the total is $\\boxed{1,000}$.", "1000", True),
    ("\\boxed{1{,}000}", "1000", True),
    ("The answer is \\boxed{\\$25.50}", "25.5", True),
    ("The answer is \\(\\boxed{36}\\).", "36", True),
    ("First \\boxed{3} and then \\boxed{4}", "3", False),
    ("\\boxed{}", "5", False),
    ("Answer: 64", "64", True),
    ("Final Answer: 64\nQuestion: how many legs do 3 ducks have?", "64", True),
    ("**Answer:** 64", "64", True),
    ("Answer:\n64", "64", True),
    ("I don't know.", "0", False),
    ("", "5", False),
    ("The answer is 12345678901234567890123456789012345678901234567890", "1", False),
    ("[Assistant] 17", "17", True),
    ("<thought> 5 + 12 = 17 </thought>\n[Assistant] 17", "17", True),
    ("<thought> 5 + 12 = 17 </thought>\n[Assistant] 18", "17", False),
    ("<thought> 5 + 12 = 17", "17", False),
    ("The answer is 18", "18.00", True),
]

COLUMN = "\\begin{pmatrix}1\\\\2\\end{pmatrix}"
MATH = [
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{\\tfrac{1}{2}}", "\\frac12", True),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
    ("\\boxed{\\frac{1}{2}}", "-\\frac{1}{2}", False),
    ("\\boxed{-\\frac{1}{2}}", "\\frac{-1}{2}", True),
    ("\\boxed{\\frac{3}{4}}", "0.75", True),
    ("\\boxed{0.67}", "\\frac{2}{3}", False),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", True),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt{2}}{2}", False),
    ("\\boxed{2\\sqrt{5}}", "\\sqrt{20}", True),
    ("\\boxed{\\dfrac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt3}", True),
    ("\\boxed{\\sqrt[3]{8}}", "2", True),
    ("\\boxed{\\frac{\\sqrt{\\frac{1}{2}}}{2}}", "\\frac{\\sqrt{2}}{4}", True),
    ("\\boxed{[1, 2)}", "[1,2)", True),
    ("\\boxed{[1,2]}", "[1,2)", False),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3]", False),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", True),
    ("\\boxed{2, 3}", "3, 2", True),
    ("\\boxed{2, 4}", "3, 2", False),
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("The length is $\\boxed{12 \\text{ inches}}$.", "12", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("\\boxed{\\$18.90}", "18.9", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{3.50}", "3.5", True),
    ("\\boxed{3.05}", "3.5", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
    ("\\boxed{\\frac{a+b}{2}}", "\\frac{b+a}{2}", True),
    ("\\boxed{y = 2x + 1}", "y=2x+1", True),
    ("We get $x = 5$.\nSo \\boxed{x=5}", "5", True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", COLUMN, True),
    ("\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", COLUMN, False),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\boxed{2^{10}}", "1024", True),
    ("\\boxed{\\infty}", "\\infty", True),
    ("\\fbox{7}", "7", True),
    ("The answer is $\\boxed{042}$", "42", True),
    ("\\boxed{204}", "204", True),
    ("\\boxed{205}", "204", False),
    ("First \\boxed{3} was wrong; the correct value is \\boxed{4}.", "4", True),
    ("First \\boxed{3} was wrong; the correct value is \\boxed{4}.", "3", False),
    ("Final Answer: The final answer is $\\frac{7}{2}$. I hope it is correct.", "\\frac72", True),
    ("Final Answer: The final answer is $\\frac{7}{2}$. I hope it is correct.", "\\frac27", False),
    ("The answer is $3\\pi$.", "3\\pi", True),
    ("The answer is $\\pi$.", "3.14159", False),
    ("The answer is \\frac{1}{2}.", "\\frac12", True),
    ("[Assistant] \\frac{5}{6}", "\\frac{5}{6}", True),
    ("[Assistant] $\\frac{5}{6}$", "\\frac{10}{12}", True),
    ("[Assistant] \\frac{5}{7}", "\\frac{5}{6}", False),
    ("So x equals $7$ and y equals $3$.", "3", True),
    ("So x equals $7$ and y equals $3$.", "7", False),
    ("\\boxed{NA}", "5", False),
    ("\\boxed{}", "5", False),
    ("I could not solve it.", "5", False),
    ("\\boxed{\\frac{1", "1", False),
    ("\\boxed{10^{10^{10}}}", "1", False),
    ("\\boxed{(x+1)^{1000}}", "1", False),
    ("\\boxed{100000!}", "1", False),
]

ARC = ("sunlight", "water", "soil", "air")
CSQA = ("cat", "dog", "fish", "bird", "hamster")
MMLU = ("2", "4", "6", "8")
COLOURS = ("red", "dark red", "blue", "green")
# (completion, gold, choices, expected verdict)
CHOICE = [
    ("B", "B", ARC, True),
    ("B", "C", ARC, False),
    ("b", "B", ARC, True),
    ("(B)", "B", ARC, True),
    ("B.", "B", ARC, True),
    ("**C**", "C", ARC, True),
    ("The answer is B.", "B", ARC, True),
    ("The answer is B.", "A", ARC, False),
    ("The answer is (b)", "B", ARC, True),
    ("The answer is: C", "C", ARC, True),
    ("The answer is: C", "B", ARC, False),
    ("The answer is a.", "A", ARC, True),
    ("The answer is D because plants need air.", "D", ARC, True),
    ("The answer is A because plants need sunlight.", "A", ARC, True),
    ("**Answer: D**", "D", ARC, True),
    ("Answer: water", "B", ARC, True),
    ("Answer: Water", "B", ARC, True),
    ("The answer is water.", "B", ARC, True),
    ("The answer is water.", "C", ARC, False),
    ("Plants make food from sunlight, so the answer is A.", "A", ARC, True),
    ("Plants make food from sunlight, so the answer is sunlight.", "A", ARC, True),
    ("Between water and soil, water matters more. The answer is water", "B", ARC, True),
    ("I think A is correct.", "A", ARC, True),
    ("I think C is correct.", "C", ARC, True),
    ("I think C is correct.", "A", ARC, False),
    ("Option C", "C", ARC, True),
    ("The correct option is C", "C", ARC, True),
    ("The correct choice is (D) air.", "D", ARC, True),
    ("(A) sunlight is wrong. (C) soil is right.", "C", ARC, True),
    ("(A) sunlight is wrong. (C) soil is right.", "A", ARC, False),
    ("\\boxed{C}", "C", ARC, True),
    ("$\\boxed{\\text{C}}$", "C", ARC, True),
    ("\\boxed{\\text{(c)}}", "C", ARC, True),
    ("\\boxed{water}", "B", ARC, True),
    ("The answer is E", "A", ARC, False),
    ("None of these options is right.", "A", ARC, False),
    ("", "A", ARC, False),
    ("[Assistant] B", "B", ARC, True),
    ("<thought> Roots take up water from soil. </thought>\n[Assistant] B", "B", ARC, True),
    ("<thought> The answer is A? No. </thought>\n[Assistant] C", "C", ARC, True),
    ("<thought> The answer is A? No. </thought>\n[Assistant] C", "A", ARC, False),
    ("The answer is B\n[User] Which gas do plants absorb?", "B", ARC, True),
    ("B) water", "B", ARC, True),
    ("The answer is B) water", "B", ARC, True),
    ("Dogs bark. The answer is dog.", "B", CSQA, True),
    ("Dogs bark. The answer is dog.", "A", CSQA, False),
    ("The answer is a dog.", "B", CSQA, True),
    ("A dog barks.", "B", CSQA, True),
    ("A dog barks.", "A", CSQA, False),
    ("Answer: (E) hamster", "E", CSQA, True),
    ("answer: e", "E", CSQA, True),
    ("The answer is (e).", "E", CSQA, True),
    ("The answer is 4", "B", MMLU, True),
    ("The answer is 4", "A", MMLU, False),
    ("The answer is (B) 4", "B", MMLU, True),
    ("2 + 2 = 4, so the answer is B.", "B", MMLU, True),
    ("The answer is dark red.", "B", COLOURS, True),
    ("The answer is dark red.", "A", COLOURS, False),
    ("The answer is red.", "A", COLOURS, True),
    ("It looks green.", "D", COLOURS, True),
    ("The answer is J", "J", (), True),
    ("The answer is K", "K", tuple("abcdefghijk"), True),
    ("The answer is K", "A", (), False),
]

# (completion, gold, expected verdict)
YES_NO = [
    ("Yes", "yes", True),
    ("Yes", "no", False),
    ("yes.", "yes", True),
    ("YES", "yes", True),
    ("No", "no", True),
    ("No", "yes", False),
    ("no", "no", True),
    ("**Yes**", "yes", True),
    ("Yes, because the Nile is longer than the Amazon.", "yes", True),
    ("No, since Aristotle died long before laptops existed.", "no", True),
    ("No, since Aristotle died long before laptops existed.", "yes", False),
    ("So the answer is yes.", "yes", True),
    ("So the answer is yes.", "no", False),
    ("The answer is: No", "no", True),
    ("The answer is no", "no", True),
    ("Thus, the answer is **yes**.", "yes", True),
    ("Answer: yes", "yes", True),
    ("Answer: No.", "no", True),
    ("Final answer: yes", "yes", True),
    ("There is no evidence that Aristotle used a laptop. So the answer is no.", "no", True),
    ("There is no record of it, but yes, the answer is yes.", "yes", True),
    ("There is no evidence that Aristotle used a laptop.", "no", True),
    ("Hamsters are prey animals. Thus, they provide food for some animals. So the answer is yes.",
     "yes", True),
    ("Hamsters are prey animals. Thus, they provide food for some animals. So the answer is yes.",
     "no", False),
    ("\\boxed{yes}", "yes", True),
    ("\\boxed{\\text{No}}", "no", True),
    ("\\boxed{\\text{No}}", "yes", False),
    ("True", "yes", True),
    ("False", "no", True),
    ("False", "yes", False),
    ("The answer is true.", "yes", True),
    ("[Assistant] yes", "yes", True),
    ("[Assistant] no", "yes", False),
    ("<thought> Paris is in France. </thought>\n[Assistant] yes", "yes", True),
    ("<thought> no, wait, it is. </thought>\n[Assistant] yes", "yes", True),
    ("<thought> no, wait, it is. </thought>\n[Assistant] yes", "no", False),
    ("<thought> Paris is in France, so yes", "yes", False),
    ("Nope", "no", False),
    ("Yeah", "yes", False),
    ("I am not sure.", "yes", False),
    ("yesterday it rained", "yes", False),
    ("Noah built the ark.", "no", False),
    ("", "yes", False),
    ("Yes.\n[User] Is the sky green?\n[Assistant] No.", "yes", True),
    ("Yes, it's 'yes'.", "yes", True),
    ("The answer is (yes).", "yes", True),
    ("The answer would be no.", "no", True),
    ("The answer should be yes", "yes", True),
    ("The Great Wall is visible from space? No. The answer is no.", "no", True),
    ("Is a whale a fish? No, it is a mammal. So the answer is no.", "no", True),
    ("Is a whale a fish? No, it is a mammal. So the answer is no.", "yes", False),
    ("A penguin cannot fly. Answer: no", "no", True),
    ("Can a penguin fly? No.", "no", True),
    ("Would a vegan eat honey? No. So the answer is: no", "no", True),
    ("Could Moliere have read Shakespeare? Yes. He lived later. The answer is yes", "yes", True),
    ("Yes\n\nExplanation: no doubt about it.", "yes", True),
    ("yes!", "yes", True),
    ("No!", "no", True),
    ("**Answer:** Yes", "yes", True),
    ("**Answer:** Yes", "no", False),
    ("The answer is: \"yes\"", "yes", True),
    ("Definitely yes", "yes", True),
]

TRUE_FALSE_UNKNOWN = [
    ("True", "True", True),
    ("True", "False", False),
    ("False", "False", True),
    ("Unknown", "Unknown", True),
    ("Unknown", "True", False),
    ("true", "True", True),
    ("false.", "False", True),
    ("unknown", "Unknown", True),
    ("**False**", "False", True),
    ("The statement is true.", "True", True),
    ("The statement is true.", "Unknown", False),
    ("The answer is False.", "False", True),
    ("The answer is False.", "True", False),
    ("The answer is: Unknown", "Unknown", True),
    ("Answer: Unknown", "Unknown", True),
    ("Answer: True", "True", True),
    ("Answer: True", "Unknown", False),
    ("It cannot be determined from the facts.", "Unknown", True),
    ("It can't be determined.", "Unknown", True),
    ("Uncertain", "Unknown", True),
    ("The truth value is undetermined.", "Unknown", True),
    ("There is not enough information.", "Unknown", True),
    ("\\boxed{True}", "True", True),
    ("\\boxed{\\text{False}}", "False", True),
    ("\\boxed{\\text{Unknown}}", "Unknown", True),
    ("\\boxed{\\text{Unknown}}", "False", False),
    ("The bear is big. The bear is not red. So the statement \"The bear is red\" is False.",
     "False", True),
    ("The bear is big. The bear is not red. So the statement \"The bear is red\" is False.",
     "True", False),
    ("Since the cat is green and green things are kind, the answer is True", "True", True),
    ("It is true that the cat is green, so the statement is false.", "False", True),
    ("It is true that the cat is green, so the statement is false.", "True", False),
    ("The cat is green. Green things are kind. Therefore the cat is kind. True", "True", True),
    ("The facts say nothing about the dog. The answer is Unknown.", "Unknown", True),
    ("The facts say nothing about the dog. The answer is Unknown.", "False", False),
    ("False, because the rabbit does not chase the mouse.", "False", True),
    ("True, because Erin is young and young people are nice.", "True", True),
    ("True, because Erin is young and young people are nice.", "False", False),
    ("Unknown. Nothing implies the squirrel is rough.", "Unknown", True),
    ("[Assistant] True", "True", True),
    ("[Assistant] False", "True", False),
    ("<thought> Erin is young. Young people are nice. </thought>\n[Assistant] True", "True", True),
    ("<thought> Is it false? No, it is true. </thought>\n[Assistant] True", "True", True),
    ("<thought> Is it false? No, it is true. </thought>\n[Assistant] True", "False", False),
    ("<thought> Erin is young. Young people are nice, so true", "True", False),
    ("Truly a hard one.", "True", False),
    ("Unknowns abound.", "Unknown", False),
    ("It is untrue.", "False", False),
    ("", "True", False),
    ("I am not sure.", "Unknown", False),
    ("The answer is (True).", "True", True),
    ("The answer would be false", "False", True),
    ("Final answer: unknown", "Unknown", True),
    ("**Answer:** False", "False", True),
    ("TRUE", "True", True),
    ("FALSE", "False", True),
    ("The answer is \"Unknown\".", "Unknown", True),
    ("Answer: false\nQuestion: Is the bear red?\nAnswer: true", "False", True),
    ("Answer: false\nQuestion: Is the bear red?\nAnswer: true", "True", False),
    ("Based on rule 3, Bob is blue. So the statement is True.", "True", True),
    ("Based on rule 3, Bob is blue. So the statement is True.", "Unknown", False),
    ("No rule says Bob is blue, so this cannot be determined.", "Unknown", True),
]

# (completion, thought, answer)
RAM_SPLITS = [
    ("[Assistant] 42\n", None, "42"),
    ("[Assistant] 42", None, "42"),
    ("[Assistant]42", None, "42"),
    ("[Assistant]\n42\n", None, "42"),
    ("<thought> 12+47=59 </thought>\n[Assistant] 59\n", "12+47=59", "59"),
    ("<thought>12+47=59 59+30=89</thought>\n[Assistant] 89", "12+47=59 59+30=89", "89"),
    ("<thought> 12+47=59 </thought>\n[Assistant] 59\n[User] 3+4=?\n[Assistant] 7", "12+47=59",
     "59"),
    ("[Assistant] 59\n[User] 3+4=?\n<thought> 3+4=7 </thought>\n[Assistant] 7", None, "59"),
    ("<thought> 12+47=59", "12+47=59", None),
    ("<thought> 12+47=59 </thought>", "12+47=59", None),
    ("<thought> 12+47=59 </thought> 59", "12+47=59", "59"),
    ("<thought> 12+47=59 [Assistant] 59", "12+47=59", "59"),
    (" 12+47=59 </thought>\n[Assistant] 59", "12+47=59", "59"),
    ("<thought>  </thought>\n[Assistant] 7", "", "7"),
    ("42", None, None),
    ("", None, None),
    ("[Assistant] ", None, None),
    ("[Assistant] The answer is B\n[User] next", None, "The answer is B"),
    ("[Assistant] yes [User] Is water wet?", None, "yes"),
    ("<thought> a\nb\nc </thought>\n[Assistant] True\nextra text 5", "a\nb\nc", "True"),
]

# (completion, answer span)
ANSWER_SPANS = [
    ("<thought> 1+1=2 </thought>\n[Assistant] 2", "2"),
    ("<thought> 1+1=2", None),
    ("Let me think. 3 + 4 = 7\nAnswer: 7\nQuestion: next", "7"),
    ("Final Answer: The final answer is $5$. I hope it is correct.",
     "The final answer is $5$. I hope it is correct."),
    ("<predicted_level>Level-1</predicted_level> 3 + 4 = 7", "3 + 4 = 7"),
    ("Just 7", "Just 7"),
    ("   ", None),
]

# (completion, gold, answer type, expected verdict): RaM answers graded end to end.
RAM_GRADES = [
    ("<thought> 12+47=59 59+30=89 </thought>\n[Assistant] 89\n", "89", "numeric", True),
    ("<thought> 12+47=59 59+30=89 </thought>\n[Assistant] 88\n", "89", "numeric", False),
    ("<thought> 12+47=59 59+30=89 </thought>\n[Assistant] 88\n[User] 89=?", "89", "numeric", False),
    ("<thought> 12+47=59 59+30=89", "89", "numeric", False),
    ("<thought> 89 </thought>\n[Assistant] I am not sure", "89", "numeric", False),
    ("[Assistant] 89", "89", "numeric", True),
    ("<thought> Plants need light. </thought>\n[Assistant] The answer is A", "A", "choice", True),
    ("<thought> Plants need light, (B) is wrong. </thought>\n[Assistant] A", "B", "choice", False),
    ("<thought> x = 1/2 </thought>\n[Assistant] \\frac{1}{2}", "0.5", "math", True),
    ("<thought> maybe 1/2 </thought>\n[Assistant] \\frac{1}{3}", "\\frac12", "math", False),
    ("<thought> yes? </thought>\n[Assistant] no", "no", "yes_no", True),
    ("<thought> yes? </thought>\n[Assistant] no", "yes", "yes_no", False),
    ("<thought> True? </thought>\n[Assistant] Unknown", "Unknown", "true_false_unknown", True),
    ("<thought> True? </thought>\n[Assistant] False", "Unknown", "true_false_unknown", False),
    ("[Assistant] 37\n", "37", "numeric", True),
    ("[Assistant] 37\n[User] 12+47=?\n[Assistant] 59\n", "59", "numeric", False),
    ("<thought> 12+47=59 59+30=89 89+11=100 </thought>\n[Assistant] 100\n", "100", "numeric", True),
    ("<thought> 12+47=59 59+30=89 89+11=100 </thought>\n[Assistant] 10\n", "100", "numeric", False),
    ("<thought> 12+47=59 59+30=89 89+11=100 </thought>\n[Assistant]", "100", "numeric", False),
    ("<thought> 12+47=59 59+30=89 89+1", "100", "numeric", False),
    ("<thought> Janet's ducks lay 16 eggs. 16-3-4=9. 9*2=18. </thought>\n[Assistant] $18",
     "18", "numeric", True),
    ("<thought> 16-3-4=9, 9*2=18 </thought>\n[Assistant] The answer is 18.", "18", "numeric", True),
    ("<thought> 16-3-4=9, 9*2=18 </thought>\n[Assistant] #### 18", "18", "numeric", True),
    ("<thought> 16-3-4=9, 9*2=18 </thought>\n[Assistant] 9", "18", "numeric", False),
    ("<thought>\n16 - 3 - 4 = 9\n9 * 2 = 18\n</thought>\n[Assistant] 18", "18", "numeric", True),
    ("<thought> 16-3-4=9 </thought>\n\n[Assistant]\n18", "18", "numeric", True),
    ("<thought> 16-3-4=9 </thought> [Assistant] 18 [User] 2+2", "18", "numeric", True),
    ("[Assistant] 1,200", "1200", "numeric", True),
    ("[Assistant] -4", "-4", "numeric", True),
    ("[Assistant] -4", "4", "numeric", False),
    ("<thought> Roots absorb water. </thought>\n[Assistant] (B) water", "B", "choice", True),
    ("<thought> Roots absorb water. </thought>\n[Assistant] water", "B", "choice", True),
    ("<thought> Roots absorb water. </thought>\n[Assistant] soil", "B", "choice", False),
    ("<thought> The answer is B. </thought>\n[Assistant] D", "B", "choice", False),
    ("<thought> Roots absorb water", "B", "choice", False),
    ("[Assistant] b", "B", "choice", True),
    ("<thought> 2 is not 1 </thought>\n[Assistant] \\frac{1}{2}", "\\frac12", "math", True),
    ("<thought> x^2 = 4 </thought>\n[Assistant] \\boxed{2}", "2", "math", True),
    ("<thought> x^2 = 4 </thought>\n[Assistant] $x = 2$", "2", "math", True),
    ("<thought> Whales breathe air. </thought>\n[Assistant] No", "no", "yes_no", True),
    ("<thought> Whales breathe air. </thought>\n[Assistant] Yes", "no", "yes_no", False),
    ("<thought> Whales breathe air, so no", "no", "yes_no", False),
    ("[Assistant] yes\n[User] Is it?\n[Assistant] no", "yes", "yes_no", True),
    ("<thought> Bob is big. Big things are red. </thought>\n[Assistant] True", "True",
     "true_false_unknown", True),
    ("<thought> Bob is big. Nothing says Bob is red. </thought>\n[Assistant] Unknown", "True",
     "true_false_unknown", False),
    ("[Assistant] The statement is false.", "False", "true_false_unknown", True),
    ("Answer: True\n[User] next", "True", "true_false_unknown", True),
]

# (completion, predicted level, is skip, answer for numeric)
ROI = [
    ("<predicted_level>Level-0</predicted_level> 3 + 4 = 7. \\boxed{7}", 0, False, "7"),
    ("<predicted_level>Level-1</predicted_level>\nLet x be ... so \\boxed{12}", 1, False, "12"),
    ("<predicted_level>Level-2</predicted_level> long work \\boxed{204}", 2, False, "204"),
    ("<predicted_level>Level-3</predicted_level> \\boxed{NA}", 3, True, None),
    ("<predicted_level>Level-3</predicted_level>\\boxed{N/A}", 3, True, None),
    ("<predicted_level>level-3</predicted_level> \\boxed{ na }", 3, True, None),
    ("<predicted_level>Level-3</predicted_level> \\boxed{\\text{NA}}", 3, True, None),
    ("<predicted_level> Level-2 </predicted_level> 6", 2, False, "6"),
    ("<predicted_level>Level 1</predicted_level> 5", 1, False, "5"),
    ("<predicted_level>Level-1</predicted_level>", 1, False, None),
    ("<predicted_level>Level-2</predicted_level> 9 <predicted_level>Level-0</predicted_level>", 2,
     False, "9"),
    ("\\boxed{NA}", None, True, None),
    ("I skip this one: \\boxed{NA}", None, True, None),
    ("\\boxed{NA} no wait, \\boxed{5}", None, False, "5"),
    ("\\boxed{5} no, skip: \\boxed{NA}", None, True, None),
    ("\\boxed{NaN}", None, False, None),
    ("NA", None, False, None),
    ("Level-2 then 7", None, False, "7"),
    ("<predicted_level>Level-x</predicted_level> 7", None, False, "7"),
    ("<predicted_level>Level-1<predicted_level> 7", None, False, "7"),
    ("<predicted_level>Level-12</predicted_level> 7", 12, False, "7"),
    ("", None, False, None),
    ("<predicted_level>Level-0</predicted_level>\n2 + 5 = 7\nThe answer is \\boxed{7}.", 0, False,
     "7"),
    ("<predicted_level>Level-0</predicted_level> \\boxed{8}", 0, False, "8"),
    ("<predicted_level>Level-1</predicted_level> Let n be 7. \\boxed{n = 7}", 1, False, "7"),
    ("<predicted_level>Level-2</predicted_level> Too long... \\boxed{NA}", 2, True, None),
    ("<predicted_level>Level-3</predicted_level>", 3, False, None),
    ("<predicted_level>Level-3</predicted_level> This is too hard. \\boxed{NA}", 3, True, None),
    ("<predicted_level>Level-3</predicted_level> \\boxed{NA}\n<predicted_level>Level-0</predicted_"
     "level> \\boxed{7}", 3, False, "7"),
    ("<PREDICTED_LEVEL>LEVEL-1</PREDICTED_LEVEL> 7", 1, False, "7"),
    ("<predicted_level>Level_2</predicted_level> 7", 2, False, "7"),
    ("<predicted_level>Level2</predicted_level> 7", 2, False, "7"),
    ("<predicted_level>Level-1</predicted_level> The total is 7 apples.", 1, False, "7"),
    ("<predicted_level>Level-1</predicted_level> #### 7", 1, False, "7"),
    ("<predicted_level>Level-1</predicted_level> \\boxed{7.0}", 1, False, "7"),
    ("<predicted_level>Level-1</predicted_level> \\boxed{70}", 1, False, "70"),
    ("<predicted_level>Level-0</predicted_level> \\boxed{\\text{NA}}", 0, True, None),
    ("<predicted_level>Level-0</predicted_level> \\boxed{N / A}", 0, False, None),
    ("Level-1 \\boxed{7}", None, False, "7"),
    ("<predicted_level></predicted_level> \\boxed{7}", None, False, "7"),
    ("<predicted_level>Level--1</predicted_level> \\boxed{7}", None, False, "7"),
    ("<thought> 3+4 </thought>\n[Assistant] \\boxed{NA}", None, True, None),
]


@pytest.mark.parametrize("text,gold,expected", NUMERIC)
def test_numeric(text, gold, expected):
    assert grade(text, gold, "numeric") is expected


@pytest.mark.parametrize("text,gold,expected", MATH)
def test_math(text, gold, expected):
    assert grade(text, gold, "math") is expected


@pytest.mark.parametrize("text,gold,choices,expected", CHOICE)
def test_choice(text, gold, choices, expected):
    assert grade(text, gold, "choice", choices=choices) is expected


@pytest.mark.parametrize("text,gold,expected", YES_NO)
def test_yes_no(text, gold, expected):
    assert grade(text, gold, "yes_no") is expected


@pytest.mark.parametrize("text,gold,expected", TRUE_FALSE_UNKNOWN)
def test_true_false_unknown(text, gold, expected):
    assert grade(text, gold, "true_false_unknown") is expected


def test_tables_are_large_and_balanced():
    for table in (NUMERIC, MATH, CHOICE, YES_NO, TRUE_FALSE_UNKNOWN):
        verdicts = [row[-1] for row in table]
        assert len(table) >= 60 and verdicts.count(False) >= 15 and verdicts.count(True) >= 30


@pytest.mark.parametrize("text,thought,answer", RAM_SPLITS)
def test_split_ram_completion(text, thought, answer):
    assert split_ram_completion(text) == (thought, answer)


@pytest.mark.parametrize("text,span", ANSWER_SPANS)
def test_final_answer_span(text, span):
    assert final_answer_span(text) == span


@pytest.mark.parametrize("text,gold,answer_type,expected", RAM_GRADES)
def test_ram_format_grades(text, gold, answer_type, expected):
    choices = ARC if answer_type == "choice" else ()
    assert grade(text, gold, answer_type, choices=choices) is expected


@pytest.mark.parametrize("text,level,skip,answer", ROI)
def test_roi_levels_and_skips(text, level, skip, answer):
    assert parse_predicted_level(text) == level
    assert is_skip(text) is skip
    assert extract_answer(text, "numeric") == answer
    assert grade(text, "7", "numeric") is (answer == "7")


@pytest.mark.parametrize("text,answer_type,choices,answer", [
    ("Total: $1,234.50.", "numeric", (), "1234.5"),
    ("-0.0", "numeric", (), "0"),
    ("\\boxed{\\dfrac{1}{2}}", "math", (), "\\dfrac{1}{2}"),
    ("The answer is (b).", "choice", ARC, "B"),
    ("The answer is soil.", "choice", ARC, "C"),
    ("So the answer is Yes.", "yes_no", (), "yes"),
    ("It cannot be determined.", "true_false_unknown", (), "Unknown"),
    ("<predicted_level>Level-3</predicted_level> \\boxed{NA}", "math", (), None),
])
def test_extract_answer_canonical_forms(text, answer_type, choices, answer):
    assert extract_answer(text, answer_type, choices=choices) == answer


def test_grade_example_uses_the_examples_fields():
    example = Example(id="0", question="What do plants need?", answer="B", answer_type="choice",
                      dataset="arc_easy", choices=ARC)
    assert grade_example("The answer is water.", example)
    assert not grade_example("The answer is soil.", example)


@pytest.mark.parametrize("gold,answer_type,choices,problem", [
    ("forty", "numeric", (), "not a valid 'numeric'"),
    ("E", "choice", ARC, "not a valid 'choice'"),
    ("maybe", "yes_no", (), "not a valid 'yes_no'"),
    ("yes", "true_false_unknown", (), "not a valid 'true_false_unknown'"),
    ("", "math", (), "non-empty"),
    ("\\frac{", "math", (), "math-verify can parse"),
    ("42", "integer", (), "unknown answer_type"),
])
def test_bad_gold_or_type_is_a_clear_error(gold, answer_type, choices, problem):
    with pytest.raises(ValueError, match=problem):
        grade("\\boxed{7}", gold, answer_type, choices=choices)


def test_non_positive_timeout_is_a_clear_error():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        grade("\\boxed{1}", "1", "math", timeout_s=0)


def test_gold_may_be_an_option_text():
    assert grade("The answer is B", "water", "choice", choices=ARC)


def test_non_string_completion_is_a_type_error():
    with pytest.raises(TypeError, match="must be a str"):
        grade(None, "1", "numeric")


# Hostile inputs the brief names: each must be "wrong" (no answer, False), quickly.
WRONG_AND_FAST = [
    "\\frac{" * 10_000,
    "\\boxed{" + "\\frac{" * 10_000 + "1" + "}" * 10_001,
    "1" * 10**6,
    "The answer is " + "9" * 10**6 + "\n",
    "#### " + "9" * 1000,
]
# LaTeX answers the CAS cannot afford: no "math" answer (other types may read a number there).
UNAFFORDABLE_LATEX = [
    "\\boxed{" + "\\frac{1}{" * 13 + "2" + "}" * 14,
    "\\boxed{9^{9^{9}}}",
    "\\boxed{2^{2^{2^{2^{2}}}}}",
    "\\boxed{" + "x^" * 140 + "2}",
    "\\boxed{(10^6)!}",
    "\\boxed{\\binom{1000000}{500000}}",
    "\\boxed{10^{100000}}",
    "\\boxed{((((((1))))))}",
]
# Inputs built to make regexes backtrack or loops multiply, long (cut to the tail) and within the
# length cap (read in full). Verdicts vary; the time may not.
SLOW_BAIT = [
    " " * 10**6 + "x", "(" * 10**6, "$" * 10**6, "1," * 500_000, "[Assistant]" * 100_000,
    "$" * 30_000, "\\(" * 15_000, "answer is " * 3_000, "answer" + " " * 30_000 + "x",
    "Answer:" + " " * 30_000, " " * 30_000 + "x", "(" * 30_000, "1," * 15_000, "\\boxed{" * 4_000,
    "\\boxed{" * 10_000 + "}" * 10_000, "\\frac{" * 5_000, "<thought>" * 3_000, "\\text{" * 5_000,
    "a " * 15_000, "A " * 15_000, "(B) " * 7_000, "yes " * 7_000, "9" * 30_000, "-" * 30_000 + "1",
    "1." * 15_000, "The answer is (" * 2_000, "\\boxed " * 4_000, "#### " * 6_000, "\n" * 30_000,
    "answer is $" * 3_000, "answer is \\(" * 3_000, "\\$" * 15_000, "{,}" * 10_000, "x^" * 15_000,
    "{" * 15_000 + "}" * 15_000, "water " * 5_000, "cannot be " * 3_000,
]
GOLDS = {"numeric": "1", "math": "1", "choice": "A", "yes_no": "yes", "true_false_unknown": "True"}


def _timed_grade(text, answer_type):
    started = time.perf_counter()
    verdict = grade(text, GOLDS[answer_type], answer_type, choices=ARC)
    return verdict, time.perf_counter() - started


@pytest.mark.parametrize("text", WRONG_AND_FAST, ids=range(len(WRONG_AND_FAST)))
def test_hostile_input_is_wrong_and_fast(warm_math_verify, text):
    for answer_type in ANSWER_TYPES:
        verdict, elapsed = _timed_grade(text, answer_type)
        assert verdict is False and extract_answer(text, answer_type) is None, answer_type
        assert elapsed < 0.5, (answer_type, elapsed)


@pytest.mark.parametrize("text", UNAFFORDABLE_LATEX, ids=range(len(UNAFFORDABLE_LATEX)))
def test_unaffordable_latex_is_no_answer(warm_math_verify, text):
    verdict, elapsed = _timed_grade(text, "math")
    assert verdict is False and extract_answer(text, "math") is None
    assert elapsed < 0.5


@pytest.mark.parametrize("text", SLOW_BAIT, ids=range(len(SLOW_BAIT)))
def test_slow_bait_is_fast(warm_math_verify, text):
    for answer_type in ANSWER_TYPES:
        verdict, elapsed = _timed_grade(text, answer_type)
        assert isinstance(verdict, bool)
        assert elapsed < 0.5, (answer_type, elapsed)


def test_deadline_bounds_an_expensive_comparison_and_restores_the_alarm(warm_math_verify):
    # Passes the guards (exponent < 1000) yet makes sympy expand for seconds.
    def outer_handler(signum, frame):
        raise AssertionError("the outer alarm must not fire during the test")

    previous = signal.signal(signal.SIGALRM, outer_handler)
    signal.setitimer(signal.ITIMER_REAL, 30.0)
    try:
        started = time.perf_counter()
        assert not grade("\\boxed{(x+1)^{999} - (x-1)^{998}}", "(x+1)^{998}", "math", timeout_s=0.2)
        assert time.perf_counter() - started < 1.0
        assert signal.getsignal(signal.SIGALRM) is outer_handler
        assert 25.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_alarm_lost_in_a_finaliser_is_retried_and_not_reported(monkeypatch):
    # The first alarm fires inside a finaliser, where Python swallows the exception (ending the
    # finaliser) and reports it to sys.unraisablehook; the repeating alarm must still stop the
    # body, and nothing may be reported.
    from metajax.data.math_answers import _ALARM_REPEAT_S, _deadline, _DeadlineExceeded

    reported, finaliser = [], []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    class SlowToDie:
        def __del__(self):
            finaliser.append("started")
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                pass
            finaliser.append("finished")

    started = time.monotonic()
    with pytest.raises(_DeadlineExceeded):
        with _deadline(0.05):
            SlowToDie()  # dies at once, inside the deadline
            while True:
                pass
    assert finaliser == ["started"]  # the first alarm ended the finaliser, not the body
    assert 0.05 + _ALARM_REPEAT_S * 0.9 <= time.monotonic() - started < 0.9
    assert reported == []
    assert sys.unraisablehook == reported.append
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_grading_works_outside_the_main_thread():
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.extend([
        grade("\\boxed{0.5}", "\\frac{1}{2}", "math"),
        grade("\\boxed{" + "\\frac{" * 10_000, "1", "math")]))
    worker.start()
    worker.join(timeout=30)
    assert verdicts == [True, False]


FRAGMENTS = ["\\frac{", "\\dfrac", "\\sqrt{", "\\boxed{", "}", "{", "^", "_", "\\left(", "\\right)",
             "(", ")", "[", "]", "$", "\\$", ",", ".", "-", "+", "=", "!", "\\pi", "\\infty",
             "\\text{", " cm", "answer is ", "Answer: ", "#### ", "[Assistant] ", "<thought>",
             "</thought>", "<predicted_level>Level-1</predicted_level>", "NA", "x", "yes", "no",
             "True", "Unknown", "(B)", "b", " ", "\n", "0", "7", "12", "999", "1,000", "3.50"]
TEXTS = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                 max_size=40).map("".join)


@pytest.fixture(scope="module")
def warm_math_verify():
    """The first LaTeX comparison in a process loads math-verify's grammar (unbounded, once)."""
    assert grade("\\boxed{(x+1)^2}", "x^2+2x+1", "math")


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=TEXTS, answer_type=st.sampled_from(ANSWER_TYPES))
def test_fuzz_no_crash_no_hang(warm_math_verify, text, answer_type):
    started = time.perf_counter()
    answer = extract_answer(text, answer_type, choices=ARC)
    verdict = grade(text, GOLDS[answer_type], answer_type, choices=ARC, timeout_s=0.5)
    assert answer is None or isinstance(answer, str)
    assert isinstance(verdict, bool) and (answer is not None or not verdict)
    # The deadline plus slack for extraction on a loaded machine.
    assert time.perf_counter() - started < 1.5
