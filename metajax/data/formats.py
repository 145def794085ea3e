"""The text formats metajax reads and writes, defined once; prompts and graders both read them.

RaM's base-model format (arXiv 2410.05563, PAPERS.md section 1):

    "[User] {question}\\n" ["<thought> {thought} </thought>\\n"] "[Assistant] {answer}\\n"

and ROI-Reasoning's exam answers (PAPERS.md section 2): a level tag, then the solution, or the skip
answer. The writers (`metajax.data.prompts`, `metajax.data.toy`) format these strings; the readers
(`metajax.data.graders`, evaluation, sampling stops) search for them.
"""

from __future__ import annotations

import re

USER_MARKER = "[User]"
USER_BLOCK = USER_MARKER + " {}\n"
THOUGHT_OPEN, THOUGHT_CLOSE = "<thought>", "</thought>"
THOUGHT_BLOCK = THOUGHT_OPEN + " {} " + THOUGHT_CLOSE + "\n"
ANSWER_MARKER = "[Assistant]"
# How a RaM-format completion is opened: "direct" forces the answer marker, "cot" forces a thought
# open, "policy" leaves the choice to the model. Forced tokens count as generated.
FORCED_OPENINGS = {"direct": ANSWER_MARKER, "cot": THOUGHT_OPEN, "policy": ""}

LEVEL_TAG = "<predicted_level>Level-{}</predicted_level>"
SKIP_ANSWER = "\\boxed{NA}"
# ROI-Reasoning level upper bounds in tokens (PAPERS.md section 2): Level-k covers up to
# `ROI_LEVEL_BOUNDS[k]` tokens and Level-`len(ROI_LEVEL_BOUNDS)` means skip. The toy world scales
# them down.
ROI_LEVEL_BOUNDS: tuple[int, ...] = (256, 512, 1024)
# The lenient readers of LEVEL_TAG (any case, spaces inside the tag, "Level-2", "Level_2", "Level 2"
# or "Level2") and of SKIP_ANSWER's body, the content of the box ("NA" or "N/A", any case).
LEVEL_TAG_PATTERN = re.compile(
    r"<predicted_level>\s{0,8}Level[-_ ]?(\d{1,2})\s{0,8}</predicted_level>", re.IGNORECASE)
SKIP_PATTERN = re.compile(r"\s*N/?A\s*", re.IGNORECASE)
