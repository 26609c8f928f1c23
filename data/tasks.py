"""
The built-in reasoning tasks. Each task owns, in one place, everything the scripts agree on:

- make_problem():        a seeded generator of questions with exact answers (+ gold steps)
- prompt():              THE prompt template, plain or with a given answer (the hint);
                         fewshot_prompt(): the same behind solved exemplars, for a pretrained model
- extract_answer():      THE answer extractor, answers_match() to compare answers, and
                         reward(): the exact-match reward that evaluation and RL share
- wrong_answers():       plausible wrong answers to give as hints (SML step 1)
- careless_rationale():  a worked solution by a careless author (the pretraining corpus)
- rationalization():     a rationale that argues for a given answer, right or wrong, by an
                         author who may slip on the way and bends a step to reach it
- assertion():           right steps, then the given answer asserted anyway
- step_errors():         an oracle for measuring only: how many steps of a rationale are wrong
- answer_candidates():   the answers an answer line is read among (choice, yes/no datasets)

A rationale is a list of steps, one sentence each, ending in "So the answer is X."

At the end: the paper's datasets (read from files by data/datasets.py), one task class per
answer type (number, choice, yes/no, letters), registered in TASKS after the built-in ones.
"""

import functools
import re
from decimal import Decimal
from fractions import Fraction

ANSWER_RE = re.compile(r"the answer is\s+(-?[a-z0-9]+)", re.IGNORECASE)


class Task:
    name = ""
    answer_kind = "text"  # "number" | "yesno" | "text"
    ANSWER_PREFIX = " So the answer is"
    # Tokens a rationale may take: every script samples with this budget unless --max_new_tokens
    # says otherwise (collection, evaluation, the reward model's report, PPO's rollouts and
    # checkpoint choice), so that no stage judges a rationale cut off where another let it finish.
    rationale_tokens = 64
    STEP_CHECK = "every step right"  # what step_errors() == 0 is called in reports

    # --- the prompt template (used by the corpus, SFT, the RM, PPO and evaluation) ---
    def prompt(self, question, hint=None):
        if hint is None:
            return f"Question: {question}\nAnswer:"
        return f"Question: {question}\nHint: the answer is {hint}.\nAnswer:"

    def fewshot_prompt(self, question, exemplars, hint=None):
        """A pretrained model's prompt: solved exemplars ({"question", "rationale", "answer"},
        the rationale one line that states no answer), then the question. Given an answer
        (SML step 1 as the paper runs it on a base model), each exemplar shows its answer, then
        a rationale for it, and the model writes the explanation of `hint`. Without one, the
        exemplars are in prompt()'s zero-shot format with their answer line, so the model
        answers as a fine-tuned one does (evaluation of a base model, reading an answer)."""
        if hint is None:
            shots = [f"{self.prompt(e['question'])} {self.finish([e['rationale']], e['answer'])}" for e in exemplars]
            return "\n\n".join(shots + [self.prompt(question)])
        shots = [f"Question: {e['question']}\nGiven answer: {e['answer']}\nExplanation: {e['rationale']}"
                 for e in exemplars]
        return "\n\n".join(shots + [f"Question: {question}\nGiven answer: {hint}\nExplanation:"])

    # --- the answer extractor ---
    def normalize(self, answer):
        return answer.strip().lower().rstrip(".")

    def stated_answers(self, text):
        """Every distinct final answer a rationale states ("the answer is X"), normalized."""
        return {self.normalize(m) for m in ANSWER_RE.findall(text)}

    def stated_answer(self, text):
        """The one final answer a rationale states, or None if it states none or two different
        ones: the strict reading that SML step 2's consistency check and every reward use (a
        rationale that argues for two answers agrees with neither; an answer it never states,
        such as a lenient extractor's last number, earns nothing)."""
        found = self.stated_answers(text)
        return next(iter(found)) if len(found) == 1 else None

    def extract_answer(self, text):
        """The final answer a rationale states, normalized; None if it states none, or
        states two different ones. Text after the statement is ignored. Evaluation reads answers
        with this; the paper's datasets read more leniently (DatasetTask below)."""
        return self.stated_answer(text)

    def answers_match(self, a, b):
        if a is None or b is None:
            return False
        return self.normalize(str(a)) == self.normalize(str(b))

    def reward(self, text, answer):
        """The exact-match reward: 1.0 if `text` states exactly one final answer and it is
        `answer`, else 0.0 (the strict reading: the lenient extractor is for evaluation only).
        The exact-match PPO baseline trains on it."""
        return float(self.answers_match(self.stated_answer(text), answer))

    def finish(self, steps, answer):
        return " ".join(steps) + f"{self.ANSWER_PREFIX} {answer}."

    def assertion(self, problem, given_answer, rng):
        """The other way to argue for a given answer: do the steps right, then conclude what
        you were told (prepare.py --assert_frac, off by default). A small model learns to copy
        the hint this way fast, but then also writes wrong steps followed by the correct answer,
        and a reward model trained on such pairs learns a flaw its policy never makes."""
        text = self.rationalization(problem, problem["answer"], rng)
        return text[:text.rindex(self.ANSWER_PREFIX)] + f"{self.ANSWER_PREFIX} {self.normalize(given_answer)}."

    def step_errors(self, question, text):
        """How many steps of a rationale do not follow from the question and the step before
        (a final answer that does not follow from the last step counts as one more). A slip
        that a later slip cancels counts too: the answer check cannot see it, this can. None
        where the steps cannot be read back (one missing, another format) or the task has no
        checker (a dataset of your own). For measuring rationale quality only, never for
        training: SML's point is that the answers alone have to do."""
        return None

    def answer_candidates(self, row):
        """The answers an answer line is read among (rationales.read_answers_by_candidates),
        or None: read what the model writes, greedily (numbers, letters, the built-in world)."""
        return None

    def wrong_answers(self, row, m, rng):
        """m distinct wrong answers: the other choices for multiple choice, else the task's own."""
        if row.get("choices"):
            others = [c for c in row["choices"] if not self.answers_match(c, row["answer"])]
            return rng.sample(others, min(m, len(others)))
        return self._wrong_answers(row["answer"], m, rng)


class Arithmetic(Task):
    """Multi-step word problems with small numbers: a start value, then 2-3 changes.

    Some changes are phrased in a way that most careless authors misread as the other
    operation (TRICKY_ADD, TRICKY_SUB: "Tom adds 2 to a gift box." takes 2 away from Tom).
    That is the world's misconception: a model trained on the corpus believes the misreading,
    so it is wrong on those questions at greedy decoding, the same way every time, while the
    right reading is in the corpus too (the careful authors, and everyone told the answer)."""
    name = "arithmetic"
    answer_kind = "number"
    NAMES = ["Tom", "Ann", "Sam", "Mia", "Ben", "Liz", "Max", "Eva", "Leo", "Zoe", "Kim", "Ray"]
    OBJECTS = ["apples", "pens", "books", "cards", "coins", "shells", "stamps", "balls", "cups",
               "rocks", "eggs", "keys"]
    ADD = ["{n} buys {a} more.", "{n} finds {a} more.", "{n} gets {a} more.", "{n} wins {a} more."]
    SUB = ["{n} gives away {a}.", "{n} loses {a}.", "{n} sells {a}.", "{n} eats {a}."]
    # Phrasings whose surface word points to the other operation: taking is not losing here
    # (the things come to Tom), adding and putting are (they go into a box that is not Tom's).
    TRICKY_ADD = ["{n} takes back {a}.", "{n} takes {a} from a jar."]
    TRICKY_SUB = ["{n} adds {a} to a gift box.", "{n} puts {a} in a gift box."]
    # the verb of each sentence and its (right) operation, to read a question's steps back: "buys": "+"
    VERB_OPS = {**dict.fromkeys([t[4:t.index(" {a}")] for t in ADD + TRICKY_ADD], "+"),
                **dict.fromkeys([t[4:t.index(" {a}")] for t in SUB + TRICKY_SUB], "-")}
    QUESTION_STEP_RE = re.compile(rf"\w+ ({'|'.join(sorted(VERB_OPS, key=len, reverse=True))}) (\d+)")
    RATIONALE_STEP_RE = re.compile(r"(-?\d+) ([+-]) (\d+) = (-?\d+)\.")
    OTHER_OP = {"+": "-", "-": "+"}

    @staticmethod
    def _apply(value, op, a):
        return value + a if op == "+" else value - a

    def __init__(self, min_steps=2, max_steps=3, max_operand=3, tricky=0.25, misread=0.9):
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"arithmetic needs 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if max_operand < 2:
            raise ValueError(f"arithmetic needs max_operand >= 2, got {max_operand}")
        for knob, v in (("tricky", tricky), ("misread", misread)):
            if not 0 <= v <= 1:
                raise ValueError(f"arithmetic needs 0 <= {knob} <= 1, got {v}")
        self.min_steps, self.max_steps, self.max_operand = min_steps, max_steps, max_operand
        self.tricky, self.misread = tricky, misread

    def normalize(self, answer):
        a = super().normalize(answer)
        return str(int(a)) if re.fullmatch(r"-?\d+", a) else a  # "05" == "5"

    def make_problem(self, rng):
        name, obj = rng.choice(self.NAMES), rng.choice(self.OBJECTS)
        start = value = rng.randint(1, self.max_operand)
        sentences, ops, tricky = [f"{name} has {value} {obj}."], [], []
        # every count an author can reach, misreading any of the tricky steps: a change that
        # takes away takes no more than the least of them, so no reading goes below zero
        reachable = {start}
        for _ in range(rng.randint(self.min_steps, self.max_steps)):
            low = min(reachable)
            add = low < 2 or rng.random() < 0.5
            misreadable = self.tricky > 0 and (not add or low >= 1) and rng.random() < self.tricky
            a = rng.randint(1, self.max_operand if add and not misreadable else min(self.max_operand, low))
            op = "+" if add else "-"
            phrasings = (self.TRICKY_ADD if add else self.TRICKY_SUB) if misreadable else (self.ADD if add else self.SUB)
            sentences.append(rng.choice(phrasings).format(n=name, a=a))
            ops.append((op, a))
            tricky.append(misreadable)
            value = self._apply(value, op, a)
            reachable = {self._apply(v, o, a) for v in reachable
                         for o in ((op, self.OTHER_OP[op]) if misreadable else (op,))}
        question = " ".join(sentences) + f" How many {obj} does {name} have now?"
        return {"question": question, "answer": str(value), "start": start, "ops": ops, "tricky": tricky,
                "rationale": self._chain(start, ops)[0]}

    def _chain(self, start, ops, errors=None):
        """Write the steps 'a op b = c.'; errors[i] is added to the result of step i and
        carried into later steps (the way a slip propagates). Returns (text, final value)."""
        steps, cur = [], start
        for i, (op, a) in enumerate(ops):
            res = self._apply(cur, op, a)
            res += (errors or {}).get(i, 0)
            steps.append(f"{cur} {op} {a} = {res}.")
            cur = res
        return self.finish(steps, cur), cur

    def _misread_ops(self, problem, rng):
        """The operations an author writes: each tricky step misread with chance self.misread
        (a draw only at tricky steps, so a world without them is drawn as before)."""
        return [(self.OTHER_OP[op] if tricky and rng.random() < self.misread else op, a)
                for (op, a), tricky in zip(problem["ops"], problem.get("tricky") or [False] * len(problem["ops"]))]

    def _no_negative(self, problem, errors, ops=None):
        """Whether the chain with these slips keeps every count at zero or above."""
        return "= -" not in self._chain(problem["start"], ops or problem["ops"], errors)[0]

    def _careless_errors(self, problem, rng, error_rate, ops=None):
        # Each step slips with chance error_rate: its result is off by 1 or 2, and later steps
        # carry the wrong value on. Never a slip that drives a count below zero: the world
        # has no negative counts, so a negative number would give the slip away.
        errors = {}
        for i in range(len(problem["ops"])):
            if rng.random() < error_rate:
                ok = [d for d in (-2, -1, 1, 2) if self._no_negative(problem, {**errors, i: d}, ops)]
                if ok:
                    errors[i] = rng.choice(ok)
        return errors

    def careless_rationale(self, problem, rng, error_rate):
        # a careless author misreads a tricky phrasing (self.misread) and slips (error_rate)
        ops = self._misread_ops(problem, rng)
        text, value = self._chain(problem["start"], ops, self._careless_errors(problem, rng, error_rate, ops))
        return text, str(value)

    def rationalization(self, problem, given_answer, rng, noise=0.0):
        # An author arguing for a given answer works the steps (slipping with chance `noise`
        # per step, like a careless author), then, where that does not reach the given answer,
        # bends one step of their choosing by just what it takes and carries it on:
        # "5 + 6 = 13. 13 - 5 = 8. So the answer is 8." The bent step is the same kind of error
        # a careless author makes, so the rationales SML keeps for a wrong answer look like the
        # model's own mistakes, and what sets them apart for the reward model is the wrong
        # step, not a quirk of the corpus. Given the correct answer, a slip on the way is bent
        # back later: a right answer for the wrong reason. No count goes negative (the last
        # step always can).
        # Tricky phrasings: told the correct answer, the author finds the right reading (the
        # misreading does not reach it), so the right method is on the web beside the
        # misconception; told a wrong one, they read as careless authors do and bend.
        right = self.answers_match(given_answer, problem["answer"])
        ops = problem["ops"] if right else self._misread_ops(problem, rng)
        errors = self._careless_errors(problem, rng, noise, ops) if noise else {}
        delta = int(given_answer) - self._chain(problem["start"], ops, errors)[1]
        if delta:
            bent = lambda i: {**errors, i: errors.get(i, 0) + delta}
            steps = [i for i in range(len(ops)) if self._no_negative(problem, bent(i), ops)]
            errors = bent(rng.choice(steps))
        return self._chain(problem["start"], ops, errors)[0]

    def step_errors(self, question, text):
        # A step is wrong if it starts from the wrong count, applies the other operation than
        # the question's sentence means (a misread phrasing), or computes wrong.
        start = re.match(r"\w+ has (\d+) ", question)
        asked = [(self.VERB_OPS[v], int(a)) for v, a in self.QUESTION_STEP_RE.findall(question)]
        steps = self.RATIONALE_STEP_RE.findall(text)
        if not start or [int(b) for _, _, b, _ in steps] != [a for _, a in asked]:
            return None
        errors, cur = 0, int(start.group(1))
        for (a, op, b, c), (right_op, _) in zip(steps, asked):
            a, b, c = int(a), int(b), int(c)
            errors += a != cur or op != right_op or c != self._apply(a, op, b)
            cur = c
        return errors + (self.extract_answer(text) != str(cur))

    def _wrong_answers(self, answer, m, rng):
        v = int(answer)
        candidates = [v + d for d in (-3, -2, -1, 1, 2, 3) if v + d >= 0]
        return [str(c) for c in rng.sample(candidates, min(m, len(candidates)))]


class CoinFlip(Task):
    """The paper's Coin Flip: is the coin still heads up after some people flip it?"""
    name = "coinflip"
    answer_kind = "yesno"
    # 40 names: 2-person questions alone number 40*39*4 = 6,240, so the splits do not use
    # them all up and the corpus still sees thousands of distinct short problems
    NAMES = ["Ann", "Bob", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lou",
             "Meg", "Ned", "Oz", "Pam", "Quy", "Rex", "Sue", "Ted", "Una", "Val", "Wes", "Xia",
             "Yan", "Zed", "Abe", "Bea", "Cal", "Dot", "Eve", "Flo", "Gil", "Hap", "Ike", "Jan",
             "Kit", "Lee", "Mo", "Nia"]

    def __init__(self, min_people=2, max_people=4):
        if not 1 <= min_people <= max_people <= len(self.NAMES):
            raise ValueError(f"coinflip needs 1 <= min_people <= max_people <= {len(self.NAMES)}, "
                             f"got {min_people}, {max_people}")
        self.min_people, self.max_people = min_people, max_people

    def make_problem(self, rng):
        people = rng.sample(self.NAMES, rng.randint(self.min_people, self.max_people))
        flips = [rng.random() < 0.5 for _ in people]
        sentences = [f"{p} flips the coin." if f else f"{p} does not flip the coin."
                     for p, f in zip(people, flips)]
        question = "A coin is heads up. " + " ".join(sentences) + " Is the coin still heads up?"
        answer = "yes" if sum(flips) % 2 == 0 else "no"
        return {"question": question, "answer": answer, "people": people, "flips": flips,
                "rationale": self._chain(people, flips)[0]}

    def _chain(self, people, flips, errors=()):
        steps, heads = [], True
        for i, (p, f) in enumerate(zip(people, flips)):
            heads = heads != f
            if i in errors:
                heads = not heads
            steps.append(f"{p} {'flips' if f else 'does not flip'}: {'heads' if heads else 'tails'}.")
        answer = "yes" if heads else "no"
        return self.finish(steps, answer), answer

    def careless_rationale(self, problem, rng, error_rate):
        errors = {i for i in range(len(problem["people"])) if rng.random() < error_rate}
        return self._chain(problem["people"], problem["flips"], errors)

    def rationalization(self, problem, given_answer, rng, noise=0.0):
        # Slip with chance `noise` per step on the way, then, if the coin does not come out as
        # given, bend one state: a wrong answer argued with one bad step, or a right answer
        # reached through two that cancel.
        people, flips = problem["people"], problem["flips"]
        errors = {i for i in range(len(people)) if rng.random() < noise} if noise else set()
        if not self.answers_match(self._chain(people, flips, errors)[1], given_answer):
            errors ^= {rng.randrange(len(people))}
        return self._chain(people, flips, errors)[0]

    def step_errors(self, question, text):
        # Steps are matched to the question by position, not by name: the small model
        # writes made-up names (it never learns to copy them), which changes no coin.
        told = re.findall(r"\w+ (flips|does not flip) the coin\.", question)
        steps = re.findall(r"\w+ (flips|does not flip): (heads|tails)\.", text)
        if [f for f, _ in steps] != told:
            return None
        errors, heads = 0, True
        for flip, state in steps:
            errors += (state == "heads") != (heads != (flip == "flips"))
            heads = state == "heads"
        return errors + (self.extract_answer(text) != ("yes" if heads else "no"))

    def _wrong_answers(self, answer, m, rng):
        return ["no" if self.normalize(answer) == "yes" else "yes"][:m]


class LastLetter(Task):
    """The paper's Last Letter Concatenation."""
    name = "lastletter"
    answer_kind = "text"
    # 80 words: 2-word questions alone number 80*79 = 6,320 (with 40 words the 1,560 of
    # them would all go to the train and test splits, leaving the corpus none)
    WORDS = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fox", "Gil", "Hugo", "Iris", "Jack", "Kate",
             "Liam", "Mona", "Nick", "Olga", "Pete", "Quin", "Rosa", "Seth", "Tina", "Uma",
             "Vic", "Wade", "Xena", "Yuri", "Zack", "Amy", "Bart", "Cleo", "Drew", "Emma", "Finn",
             "Gwen", "Hank", "Ida", "Joel", "Kurt", "Lena", "Milo", "Nora", "Otis", "Paul",
             "Ruth", "Sid", "Tom", "Ugo", "Viv", "Walt", "Yves", "Zoe", "Abel", "Beth", "Carl",
             "Dirk", "Ezra", "Fred", "Gail", "Hope", "Ivan", "Jill", "Kirk", "Luis", "Mark",
             "Noah", "Omar", "Phil", "Reed", "Saul", "Troy", "Ulf", "Raj", "Will", "Yusuf",
             "Zeke", "Axel", "Lou", "Chip", "Doug", "Eric", "Fitz"]
    LETTERS = "abcdefghijklmnopqrstuvwxyz"

    def __init__(self, min_words=2, max_words=3):
        if not 1 <= min_words <= max_words <= len(self.WORDS):
            raise ValueError(f"lastletter needs 1 <= min_words <= max_words <= {len(self.WORDS)}, "
                             f"got {min_words}, {max_words}")
        self.min_words, self.max_words = min_words, max_words

    def make_problem(self, rng):
        words = rng.sample(self.WORDS, rng.randint(self.min_words, self.max_words))
        question = (f'Take the last letters of the words in "{" ".join(words)}" '
                    f"and concatenate them.")
        letters = [w[-1].lower() for w in words]
        return {"question": question, "answer": "".join(letters), "words": words,
                "letters": letters, "rationale": self._chain(words, letters)}

    def _chain(self, words, letters):
        steps = [f"The last letter of {w} is {c}." for w, c in zip(words, letters)]
        return self.finish(steps, "".join(letters))

    def careless_rationale(self, problem, rng, error_rate):
        letters = [rng.choice(self.LETTERS) if rng.random() < error_rate else c
                   for c in problem["letters"]]
        return self._chain(problem["words"], letters), "".join(letters)

    def rationalization(self, problem, given_answer, rng, noise=0.0):
        # every letter is stated as the given answer has it, so a slip on the way has nothing
        # to show for itself: `noise` does not apply here
        letters = list(self.normalize(given_answer))
        if len(letters) != len(problem["words"]):  # cannot argue letter by letter
            letters = (letters + problem["letters"])[:len(problem["words"])]
        return self.finish([f"The last letter of {w} is {c}." for w, c in zip(problem["words"], letters)],
                           self.normalize(given_answer))

    def step_errors(self, question, text):
        words = re.search(r'"([^"]*)"', question)
        steps = re.findall(r"The last letter of (\w+) is (\w)\.", text)
        if not words or [w for w, _ in steps] != words.group(1).split():
            return None
        errors = sum(c != w[-1].lower() for w, c in steps)
        return errors + (self.extract_answer(text) != "".join(c for _, c in steps))

    def _wrong_answers(self, answer, m, rng):
        answer, out = self.normalize(answer), set()
        m = min(m, 25 * len(answer))  # there are only so many one-letter changes
        while len(out) < m:  # change one letter
            i = rng.randrange(len(answer))
            out.add(answer[:i] + rng.choice(self.LETTERS.replace(answer[i], "")) + answer[i + 1:])
        return sorted(out)


# -----------------------------------------------------------------------------
# The paper's datasets (the Fine-tune-CoT collection; files read by data/datasets.py).
# Their questions come from files, not a generator, so these tasks have no make_problem or
# corpus: only the prompt (the same template as above), one extractor per answer type, the
# wrong answers to give as hints, the answers a choice or yes/no line is read among, and for
# the numeric ones a step checker that reads the rationale's equations.

# Where a model states its final answer: "The answer is 18", "the final answer is (B)",
# "Answer: yes", GSM8K's "#### 18". The last statement counts (a model that corrects itself
# means the later one).
ANSWER_STATED_RE = re.compile(r"answer\s+is\b|answer\s*:|####", re.IGNORECASE)
# A number as models write it: -3, 42.0, 1,234.50, $1,234.50, 18 dollars, 50%. Not a piece of
# another token (v2, 3.4.5, 1,23) and not a fraction (1/2 would read as 1): those are unreadable.
NUMBER_RE = re.compile(r"(?<![\w.,/])(-?)\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\d/]|,\d)")
OPENING = r"^[\s:*\"'“(]*"  # what may stand before an answer at the start of a line


class DatasetTask(Task):
    """A task read from a dataset file. extract_answer reads the answer the way real pretrained
    models state it (the rule of Kojima et al. 2022 and Fine-tune-CoT): after the LAST "answer
    is" / "answer:" / "####", the first answer in the rest of that sentence. An answer stated
    there that cannot be read is None, never the next best thing in the text. Where no answer
    is stated at all, the answer type's fallback (read_unstated) decides, or None. (The
    built-in tasks above are stricter: two different statements are None there.)"""
    answer_kind = "text"
    rationale_tokens = 128  # StrategyQA's gold rationales (SmolLM2's tokenizer): 99.9% fit in 128

    def extract_answer(self, text):
        stated = list(ANSWER_STATED_RE.finditer(text))
        if stated:
            # the rest of that sentence: "The answer is unclear. 5 ..." states nothing readable
            rest = text[stated[-1].end():].lstrip()
            return self.read_stated(re.split(r"\n|[.!?](?=\s|$)", rest, maxsplit=1)[0])
        return self.read_unstated(text)

    def stated_answers(self, text):
        """Every distinct answer the text states, each read as extract_answer reads the last.
        SML step 2 keeps a rationale only if this is exactly one answer: one that argues for
        two answers, or states none (whatever the fallback would guess), is discarded."""
        found = set()
        for m in ANSWER_STATED_RE.finditer(text):
            rest = text[m.end():].lstrip()
            answer = self.read_stated(re.split(r"\n|[.!?](?=\s|$)", rest, maxsplit=1)[0])
            if answer is not None:
                found.add(answer)
        return found

    def read_stated(self, line):
        raise NotImplementedError

    def read_unstated(self, text):
        return None


# -----------------------------------------------------------------------------
# The equation checker of the numeric datasets: every "a op b = c" a rationale writes, read back
# and recomputed. An equation is read only where it can be read whole, so that what is counted
# wrong is wrong as written, not misread:
#
#   "Natalia sold 48/2 = 24 clips"             48/2 = 24               right
#   "$20 - $10 = $10", "0.2 x 50 = $10"        $ and x, ×, ÷           right
#   "7 stickers/page * 6 pages= 42 stickers"   units after numbers     right
#   "(5 + 3) * 2 = 16 = 4 * 4"                 brackets, a chain       two equalities, right
#   "5 + 3 = 8 + 2 = 10"                       a running calculation   5 + 3 = 8, 8 + 2 = 10
#   "10 / 3 = 3.33", "10 / 3 = 3"              rounded to the digits written: right
#   "He can bake 2/ 1/5 = 10 cupcakes"         "1/5" unspaced is a number: 2 / (1/5)
#   "10 x 1,248 = 11,480"                      wrong (GSM8K's gold has this one)
#   "2x + 5 = 25", "x * 3 + 5 = 20"            a variable: not read
#   "4=6*15 = 90 packs", "24 = 12 * 2"         a first side that computes nothing: only 6*15 = 90
#
# Text is never evaluated as code: a small recursive-descent parser computes each side exactly,
# in fractions (0.1 + 0.2 = 0.3 holds).

# A number starts where no digit stands right before it ("16,0000" is not read), and is
# negative where nothing but a space, "(" or "=" stands right before its "-": "= -5", not "5-5"
_START = r"(?<![\d.])(?<!\d,)(?:(?<![\w).])-)?"
_UNIT_WORD = r"[a-z]{2,}"  # lower case: a capitalized word starts a sentence or is a name; one
                           # letter is a variable ("2x")
# a unit after a number, skipped where an operator or "=" follows: "7 stickers/page *",
# "6 pages=", "3 large stickers +"; or a rate: "$8/hour"
_OPERATOR_AHEAD = r"(?=\s*(?:[-+*×÷−–=)]|/(?![a-z])|[xX]\s))"  # a "/" before a letter is a rate's
_UNIT = rf"(?:\s*(?:{_UNIT_WORD}\s+){{0,2}}{_UNIT_WORD}(?:/{_UNIT_WORD})?{_OPERATOR_AHEAD}|/{_UNIT_WORD})?"
# and the number ends there: "1.2Y", "2x + 3" are a variable's coefficients, not read
_NOT_A_COEFFICIENT = r"(?![^\W\d_xX]|[xX](?!\d)|[.,]?\d)"
_DIGITS = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|\$?\.\d+%?"  # $1,234.50 50% .5
EQUATION_TOKEN_RE = re.compile(
    rf"(?P<time>\d{{1,2}}:\d{{2}}(?!\d))"  # 6:00 is a time of day, not math
    rf"|(?P<fraction>{_START}\$?\d+(?:\.\d+)?/\d+(?:\.\d+)?){_UNIT}{_NOT_A_COEFFICIENT}"  # unspaced: one number
    rf"|(?P<number>{_START}(?:{_DIGITS})){_UNIT}{_NOT_A_COEFFICIENT}"
    rf"|(?P<op>[-+*/×÷−–]|(?<=\s)[xX](?=\s)|(?<=\d)[xX](?=\d))"
    rf"|(?P<open>\()|(?P<close>\))|(?P<equals>=)|(?P<space>\s+)|(?P<other>[^\W\d_]+|.)")
EQUATION_OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "x": "*", "X": "*", "×": "*",
                "/": "/", "÷": "/"}


def _equation_runs(text):
    """The runs of math in a text that hold an "=": lists of tokens (kind, text), numbers,
    operators, brackets and "=", between other text (words, punctuation), which ends a run.
    A bracket right after an operand multiplies: "320(1/4) = 80". Two operands side by side
    end one run and start the next ("= $528 3 * 10 = $30": two lines joined), except where
    they may be one number, "3 1/2" or "3 000", which is then read as neither."""
    runs, run = [], []
    for m in EQUATION_TOKEN_RE.finditer(text):
        kind, token = m.lastgroup, m.group(m.lastgroup)
        after_operand = bool(run) and run[-1][0] in ("number", "fraction", "close")
        if kind == "space":
            continue
        one_number = (after_operand and run[-1][0] == "number" and text[m.start() - 1] == " "
                      and (kind == "fraction" or re.fullmatch(r"\d{3}", token)))
        if kind in ("other", "time") or one_number:
            if one_number:
                run.pop()
            if run and run[-1] == ("op", "-") and text[m.start() - 1] == "-" and token.isalpha():
                run.pop()  # "= 13 two-inch fish": a hyphen, not a minus ("= 24/Y" stays unread)
            runs.append(run)
            run = []
        elif kind == "number" and token.startswith("-") and after_operand:
            run += [("op", "-"), (kind, token[1:])]  # "10 -7": a minus, not a negative number
        elif kind == "open" and after_operand:
            run += [("op", "*"), (kind, token)]
        else:
            if kind in ("number", "fraction") and after_operand:
                runs.append(run)
                run = []
            run.append((kind, token))
    return [r for r in runs + [run] if ("equals", "=") in r]


@functools.lru_cache(maxsize=4096)
def _number(text):
    """'$1,234.50' -> Fraction(123450, 100); '1/5' -> Fraction(1, 5); '50%' -> 50 (the caller
    reads the %)."""
    head, _, tail = text.replace("$", "").replace(",", "").rstrip("%").partition("/")
    if tail and Fraction(tail) == 0:
        raise ValueError("division by zero")
    return Fraction(head) / Fraction(tail) if tail else Fraction(head)


class _Side:
    """One side of an equality, parsed and computed: its values with "%" read as /100 and with
    "%" ignored ("100% - 40% = 60%" and "20 + 10 = 30%" both hold), whether it computes
    anything, and where it is one number as written, its number of decimals (its rounding).
    Raises ValueError where the tokens are not one expression."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.values = {}
        for percent in (True, False):
            self.pos, self.percent = 0, percent
            self.values[percent] = self._sum()
            if self.pos != len(tokens):
                raise ValueError("not one expression")
        self.computes = any(kind in ("op", "fraction") for kind, _ in tokens)
        single = len(tokens) == 1 and tokens[0][0] == "number"
        self.decimals = len(tokens[0][1].rstrip("%").partition(".")[2]) if single else None
        self.text = " ".join(text for _, text in tokens)

    def _take(self, kind, ops=""):
        if self.pos < len(self.tokens):
            k, text = self.tokens[self.pos]
            if k == kind and (not ops or EQUATION_OPS[text] in ops):
                self.pos += 1
                return text
        return None

    def _sum(self):  # sum := product (("+" | "-") product)*
        value = self._product()
        while (op := self._take("op", "+-")) is not None:
            value = value + self._product() if EQUATION_OPS[op] == "+" else value - self._product()
        return value

    def _product(self):  # product := factor (("*" | "/") factor)*
        value = self._factor()
        while (op := self._take("op", "*/")) is not None:
            right = self._factor()
            if EQUATION_OPS[op] == "/" and right == 0:
                raise ValueError("division by zero")
            value = value * right if EQUATION_OPS[op] == "*" else value / right
        return value

    def _factor(self):  # factor := number | fraction | "(" sum ")"
        if (number := self._take("number")) is not None:
            return _number(number) / (100 if number.endswith("%") and self.percent else 1)
        if (fraction := self._take("fraction")) is not None:
            return _number(fraction)
        if self._take("open") is not None:
            value = self._sum()
            if self._take("close") is None:
                raise ValueError("unclosed bracket")
            return value
        raise ValueError("not a number")


def _parse(tokens):
    try:
        return _Side(tokens) if tokens else None
    except ValueError:
        return None


def _side(piece, first, last):
    """The side of an equality in `piece`, the tokens next to an "=". The first piece of a run
    may keep its longest tail that is one expression, the last its longest head, so that
    "(48 / 2 = 24)" reads 48 / 2 = 24; but only where what is left is a bracket, never part of
    an expression ("x * 3 + 5 = 20" is not 3 + 5 = 20). Between two "="s: the piece whole."""
    if first:
        starts = [n for n in range(len(piece)) if all(kind == "open" for kind, _ in piece[:n])]
        return next((side for n in starts if (side := _parse(piece[n:]))), None)
    if last:
        ends = [n for n in range(len(piece), 0, -1) if all(kind == "close" for kind, _ in piece[n:])]
        return next((side for n in ends if (side := _parse(piece[:n]))), None)
    return _parse(piece)


def _agree(left, right):
    """Whether two sides are equal: exactly, or, where one is a number as written, rounded
    up, down or to the nearest to the digits it is written with: 10 / 3 = 3.33, 2 / 3 = 0.66,
    17 / 3 = 5 ("5 and 2/3 loads") and 10 / 3 = 4 ("4 buses") hold; 7 + 3 = 11 does not."""
    number = right if right.decimals is not None else left if left.decimals is not None else None
    for percent in (True, False):
        difference = abs(left.values[percent] - right.values[percent])
        if not number:
            if difference == 0:
                return True
            continue
        unit = Fraction(1, 10 ** number.decimals)  # of its last digit, in the units it is read in
        if percent and number.tokens[0][1].endswith("%"):
            unit /= 100
        if difference < unit:
            return True
    return False


def read_equations(text):
    """Every equality a text writes that can be read whole: a list of (equation, holds). A
    run of math with n "="s holds n equalities, each between the sides next to it. One is read
    where both sides are single expressions, its first side computes something (a run that
    opens with a lone number, "24 = 12 * 2", is most often a result followed by the next
    step's label: "... = 90 minutes. Total = 210 + 90"), and so does one side of a later
    equality ("48/2 = 24 = 24" checks one). Between two "="s, a side that computes and
    starts with a number may be a running calculation: "5 + 3 = 8 + 2 = 10" holds where
    5 + 3 = 8 does."""
    found = []
    for run in _equation_runs(text):
        pieces = [[]]
        for token in run:
            if token[0] == "equals":
                pieces.append([])
            else:
                pieces[-1].append(token)
        last = len(pieces) - 1
        sides = [_side(p, i == 0, i == last) for i, p in enumerate(pieces)]
        for i, (left, right) in enumerate(zip(sides, sides[1:])):
            if not left or not right or not (left.computes or i > 0 and right.computes):
                continue
            holds = _agree(left, right)
            if not holds and i + 1 < last and right.computes and right.tokens[0][0] == "number":
                holds = _agree(left, _Side(right.tokens[:1]))  # a running calculation
            found.append((f"{left.text} = {right.text}", holds))
    return found


def canonical_number(sign, digits, fraction):
    """'1,234' '.50' -> '1234.5': one spelling per value, so numbers compare as numbers."""
    value = Decimal(sign + digits.replace(",", "") + (fraction or ""))
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


class NumberTask(DatasetTask):
    """A number: "The answer is $1,234.50." -> "1234.5", "18 dollars" -> "18", "42.0" -> "42".
    Unstated: the last number of the text (Kojima et al.'s fallback). Its steps are checked
    by the equation checker."""
    answer_kind = "number"
    STEP_CHECK = "every equation right"

    def normalize(self, answer):
        m = NUMBER_RE.fullmatch(answer.strip().rstrip("."))
        return canonical_number(*m.groups()) if m else super().normalize(answer)

    def read_stated(self, line):
        m = NUMBER_RE.search(line)
        return canonical_number(*m.groups()) if m else None

    def read_unstated(self, text):
        found = NUMBER_RE.findall(text)
        return canonical_number(*found[-1]) if found else None

    def step_errors(self, question, text):
        """The equation checker: how many of the equations a rationale writes are wrong
        (read_equations, above). None where it writes none that can be read: a rationale of
        words alone has no steps to check, which is not the same as all of them right. The
        question is not read: each equation is checked as written, not against the numbers
        the question gives, nor against the final answer."""
        equations = read_equations(text)
        return sum(not holds for _, holds in equations) if equations else None

    def _wrong_answers(self, answer, m, rng):
        """The paper's rule: random integers in 0-100 other than the gold answer. A gold answer
        outside 0-100 (GSM8K has answers in the thousands) would stand out among those, so
        there: random integers of its own sign and number of digits (1234 -> 1000-9999)."""
        gold = Decimal(self.normalize(answer))
        if 0 <= gold <= 100:
            low, high = 0, 100
        else:
            digits = len(str(int(abs(gold))))
            low, high = 10 ** (digits - 1) if digits > 1 else 1, 10 ** digits - 1
            if gold < 0:
                low, high = -high, -low
        m = min(m, high - low + 1 - (low <= gold <= high and gold == int(gold)))
        out = set()
        while len(out) < m:  # draw until m distinct ones: the ranges are large, m is small
            v = rng.randint(low, high)
            if v != gold:
                out.add(v)
        return [str(v) for v in sorted(out)]


class ChoiceTask(DatasetTask):
    """A letter among the answer choices: "(B)", "b", "The answer is (c) dog." -> "C". A bare
    letter counts only where nothing follows it but punctuation ("The answer is a cat" is not
    "A"). Unstated: the text opens or ends with a choice ("(B) 21, because ...", "... is (B)."),
    and both agree. The row's "choices" are the letters, so the wrong answers are the others."""
    answer_kind = "choice"
    LETTERS = "A-Fa-f"  # the collection's options run A-E (Date Understanding: A-F)
    OPENING_RE = re.compile(rf"{OPENING}(?:option\s+|choice\s+)?([{LETTERS}])(?=\s*(?:[).,;:!?*\"'”]|$))")
    STATED_RE = re.compile(rf"{OPENING_RE.pattern}|\(([{LETTERS}])\)")  # the first of either
    ENDING_RE = re.compile(rf"\(([{LETTERS}])\)[\s.!*\"'”]*$")

    def normalize(self, answer):
        m = re.fullmatch(r"\s*\(?([A-Za-z])\)?\.?\s*", answer)
        return m.group(1).upper() if m else super().normalize(answer)

    def read_stated(self, line):
        m = self.STATED_RE.search(line)
        return (m.group(1) or m.group(2)).upper() if m else None

    def read_unstated(self, text):
        opening = self.OPENING_RE.match(text)
        ending = self.ENDING_RE.search(text)
        found = {m.group(1).upper() for m in (opening, ending) if m}
        return found.pop() if len(found) == 1 else None

    def _wrong_answers(self, answer, m, rng):
        raise ValueError("a multiple-choice row needs its 'choices' (the letters) for wrong answers")

    def answer_candidates(self, row):
        if not row.get("choices"):
            raise ValueError("a multiple-choice row needs its 'choices' (the letters) to read an answer among")
        return list(row["choices"])


class YesNoTask(DatasetTask):
    """yes or no: "Yes," -> "yes". Unstated: the text opens with "Yes,"/"No." (a word of its
    own, not "No one ...") or ends with yes/no, and both agree."""
    answer_kind = "yesno"
    WORD = r"(yes|no)(?![\w'-])"

    def read_stated(self, line):
        m = re.match(OPENING + self.WORD, line, re.IGNORECASE)
        return m.group(1).lower() if m else None

    def read_unstated(self, text):
        opening = re.match(OPENING + self.WORD + r"(?=\s*[,.;:!]|\s*$)", text, re.IGNORECASE)
        ending = re.search(r"(?<![\w'-])" + self.WORD + r"[\s.!*\"'”]*$", text, re.IGNORECASE)
        found = {m.group(1).lower() for m in (opening, ending) if m}
        return found.pop() if len(found) == 1 else None

    _wrong_answers = CoinFlip._wrong_answers  # the other side

    def answer_candidates(self, row):
        return ["yes", "no"]


class LettersTask(DatasetTask):
    """A string of letters (Last Letter Concatenation): 'The answer is "yajo".' -> "yajo".
    Unstated: only a text that is that one word."""
    answer_kind = "letters"
    LETTERS = LastLetter.LETTERS
    WORD = r"([^\W\d_]+)"  # letters of any alphabet: one answer of the collection is "méyl"
    WORD_RE = re.compile(OPENING + WORD + r"(?=[\s\"'”.,;!*]|$)")

    def read_stated(self, line):
        m = self.WORD_RE.match(line)
        return m.group(1).lower() if m else None

    def read_unstated(self, text):
        m = re.fullmatch(r"[\s\"'“]*" + self.WORD + r"[\s\"'”.!]*", text)
        return m.group(1).lower() if m else None

    _wrong_answers = LastLetter._wrong_answers  # one-letter changes


# The collection's keys, and the answer type of each (data/datasets.py has where they come from)
DATASET_TASKS = {key: type(key, (answer_type,), {"name": key}) for key, answer_type in {
    "single_eq": NumberTask, "addsub": NumberTask, "multiarith": NumberTask, "gsm8k": NumberTask,
    "aqua": ChoiceTask, "svamp": NumberTask, "date_understanding": ChoiceTask,
    "tracking_shuffled_objects": ChoiceTask, "last_letter_concatenation": LettersTask,
    "coin_flip": YesNoTask, "commonsense_qa": ChoiceTask, "strategy_qa": YesNoTask,
}.items()}  # one class per key, so that task.name says which dataset
# Long worked solutions (SmolLM2's tokenizer): 17% of GSM8K's gold rationales and 13% of AQuA's
# exceed 128 tokens, 0.3% and 3.5% exceed 256.
DATASET_TASKS["gsm8k"].rationale_tokens = DATASET_TASKS["aqua"].rationale_tokens = 256


# The answer types with a few classes, whose class balance the reports show: a model that
# answers the majority class everywhere must not pass for one that reasons
CLASS_KINDS = ("yesno", "choice")

TASKS = {"arithmetic": Arithmetic, "coinflip": CoinFlip, "lastletter": LastLetter}
WORLD_TASKS = tuple(TASKS)  # the built-in world: generated, with a corpus and a step checker
TASKS.update(DATASET_TASKS)


def get_task(name, **knobs):
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}' (choose from: {', '.join(TASKS)})")
    return TASKS[name](**knobs)
