"""Few-shot exemplars written for this project, for the datasets that have no gold rationales
(GSM8K, AQuA and StrategyQA take theirs from their own train split instead; AQuA's written ones
serve a test-only conversion, whose train split is missing).

Every question is original (none is copied from a dataset or from Wei et al.'s prompts) and
is written in that dataset's own question format, line breaks included. Answers are written
as the dataset writes them: plain digits, a capital choice letter, yes/no, lower-case letters.
Each rationale is one line of 1-4 short sentences that reasons to the answer but does not
state it: the code appends " So the answer is X." where a format needs it. The four
arithmetic word problems (MATH) are shared by SingleEq, AddSub, MultiArith and SVAMP.
"""

MATH = [
    dict(question="A bakery made 96 muffins in the morning and 47 more in the afternoon. "
                  "How many muffins did the bakery make in all?",
         rationale="The bakery made 96 muffins and then 47 more. 96 + 47 = 143 muffins.",
         answer="143"),
    dict(question="Lena had 85 stickers. She gave 38 of them to her brother and 12 to her friend. "
                  "How many stickers does Lena have left?",
         rationale="Lena gave away 38 + 12 = 50 stickers. 85 - 50 = 35 stickers.",
         answer="35"),
    dict(question="A farmer planted 7 rows of pepper plants with 12 plants in each row. "
                  "How many pepper plants did the farmer plant?",
         rationale="There are 7 rows of 12 plants each. 7 * 12 = 84 plants.",
         answer="84"),
    dict(question="Nadia has a ribbon that is 15 meters long. She cuts it into 6 pieces of equal length. "
                  "How many meters long is each piece?",
         rationale="The 15 meters are shared equally among 6 pieces. 15 / 6 = 2.5 meters.",
         answer="2.5"),
]

DATE_UNDERSTANDING = [
    dict(question="Today is Feb 27, 2023. What is the date 3 days later in MM/DD/YYYY?\n"
                  "Which choice is true? Answer choices: (A) 03/02/2023, (B) 03/01/2023, "
                  "(C) 03/03/2023, (D) 02/24/2023, (E) 03/02/1987, (F) 04/02/2023.",
         rationale="2023 is not a leap year, so February 2023 has 28 days. "
                   "The 3 days after 02/27/2023 are 02/28/2023, 03/01/2023 and 03/02/2023. "
                   "So 3 days later is 03/02/2023.",
         answer="A"),
    dict(question="Maya's birthday party was on Nov 14, 2011, two days ago. "
                  "What is the date tomorrow in MM/DD/YYYY?\n"
                  "Which choice is true? Answer choices: (A) 11/15/2011, (B) 11/16/2011, "
                  "(C) 12/17/2011, (D) 11/17/2011, (E) 11/17/1975, (F) 11/18/2011.",
         rationale="The party was two days ago on 11/14/2011, so today is 11/16/2011. "
                   "Tomorrow is one day after today, so tomorrow is 11/17/2011.",
         answer="D"),
    dict(question="The museum opens its new wing on the first day of 2030, which is 10 days from today. "
                  "What is the date today in MM/DD/YYYY?\n"
                  "Which choice is true? Answer choices: (A) 12/21/2029, (B) 12/22/2029, "
                  "(C) 01/11/2030, (D) 12/22/2030, (E) 11/22/2029, (F) 12/20/2029.",
         rationale="The first day of 2030 is 01/01/2030. "
                   "10 days before 01/01/2030 is 12/22/2029, so today is 12/22/2029.",
         answer="B"),
    dict(question="Jake started his new job on Sep 30, 1998, exactly one week ago. "
                  "What is the date a month from today in MM/DD/YYYY?\n"
                  "Which choice is true? Answer choices: (A) 10/14/1998, (B) 11/07/1997, "
                  "(C) 11/07/1998, (D) 10/30/1998, (E) 12/07/1998.",
         rationale="September has 30 days, so one week after 09/30/1998 is 10/07/1998, which is today. "
                   "A month from today is 11/07/1998.",
         answer="C"),
]

TRACKING_SHUFFLED_OBJECTS = [
    dict(question="Alice, Bob, and Claire are playing a game. At the start of the game, they are each "
                  "holding a ball: Alice has a red ball, Bob has a green ball, and Claire has a yellow ball. "
                  "\n\nAs the game progresses, pairs of players trade balls. First, Bob and Claire swap balls. "
                  "Then, Alice and Claire swap balls. Finally, Alice and Bob swap balls. "
                  "At the end of the game, Bob has the \n"
                  "Which choice is true? Answer choices: (A) red ball, (B) green ball, (C) yellow ball.",
         rationale="After Bob and Claire swap, Alice has red, Bob has yellow and Claire has green. "
                   "After Alice and Claire swap, Alice has green, Bob has yellow and Claire has red. "
                   "After Alice and Bob swap, Alice has yellow, Claire has red and Bob has the green ball.",
         answer="B"),
    dict(question="Alice, Bob, and Claire are friends and avid readers who occasionally trade books. "
                  "At the start of the semester, they each buy one new book: Alice gets Dracula, Bob gets "
                  "Emma, and Claire gets Walden. \n\nAs the semester proceeds, they start trading around "
                  "the new books. First, Alice and Bob swap books. Then, Bob and Claire swap books. "
                  "Finally, Claire and Alice swap books. At the end of the semester, Alice has  \n"
                  "Which choice is true? Answer choices: (A) Dracula, (B) Emma, (C) Walden.",
         rationale="After Alice and Bob swap, Alice has Emma, Bob has Dracula and Claire has Walden. "
                   "After Bob and Claire swap, Alice has Emma, Bob has Walden and Claire has Dracula. "
                   "After Claire and Alice swap, Bob has Walden, Claire has Emma and Alice has Dracula.",
         answer="A"),
    dict(question="Alice, Bob, and Claire are on the same team in a soccer match. At the start of the "
                  "match, they are each assigned to a position: Alice is playing left winger, Bob is playing "
                  "goalkeeper, and Claire is playing sweeper. \n\nAs the game progresses, pairs of players "
                  "occasionally swap positions. First, Claire and Bob trade positions. Then, Alice and Bob "
                  "trade positions. Finally, Claire and Alice trade positions. At the end of the match, "
                  "Claire is playing \n"
                  "Which choice is true? Answer choices: (A) left winger, (B) goalkeeper, (C) sweeper.",
         rationale="After Claire and Bob trade, Alice is left winger, Bob is sweeper and Claire is goalkeeper. "
                   "After Alice and Bob trade, Alice is sweeper, Bob is left winger and Claire is goalkeeper. "
                   "After Claire and Alice trade, Alice is goalkeeper, Bob is left winger and Claire is sweeper.",
         answer="C"),
    dict(question="Alice, Bob, and Claire are dancers at a square dance. At the start of a song, they each "
                  "have a partner: Alice is dancing with Rosa, Bob is dancing with Tomas, and Claire is "
                  "dancing with Mirela. \n\nThroughout the song, the dancers often trade partners. First, "
                  "Alice and Claire switch partners. Then, Bob and Alice switch partners. Finally, Claire "
                  "and Bob switch partners. At the end of the dance, Alice is dancing with  \n"
                  "Which choice is true? Answer choices: (A) Rosa, (B) Tomas, (C) Mirela.",
         rationale="After Alice and Claire switch, Alice has Mirela, Bob has Tomas and Claire has Rosa. "
                   "After Bob and Alice switch, Alice has Tomas, Bob has Mirela and Claire has Rosa. "
                   "After Claire and Bob switch, Bob has Rosa, Claire has Mirela and Alice is dancing with Tomas.",
         answer="B"),
]

LAST_LETTER_CONCATENATION = [
    dict(question='Take the last letters of each words in "Dorian Felipa Quincy Maeve" and concatenate them.',
         rationale="The last letters of Dorian, Felipa, Quincy and Maeve are n, a, y and e. "
                   "Concatenating them gives naye.",
         answer="naye"),
    dict(question='Take the last letters of each words in "Tobias Ingrid Lulu Fenwick" and concatenate them.',
         rationale="The last letters of Tobias, Ingrid, Lulu and Fenwick are s, d, u and k. "
                   "Concatenating them gives sduk.",
         answer="sduk"),
    dict(question='Take the last letters of each words in "Harriet Osvaldo Kenji Marisol" and concatenate them.',
         rationale="The last letters of Harriet, Osvaldo, Kenji and Marisol are t, o, i and l. "
                   "Concatenating them gives toil.",
         answer="toil"),
    dict(question='Take the last letters of each words in "Beatrix Anselm Yolanda Corwin" and concatenate them.',
         rationale="The last letters of Beatrix, Anselm, Yolanda and Corwin are x, m, a and n. "
                   "Concatenating them gives xman.",
         answer="xman"),
]

COIN_FLIP = [
    dict(question='A coin is heads up. Bertram flips the coin. Odalys does not flip the coin. Wendell flips '
                  'the coin. Priya does not flip the coin. Is the coin still heads up? '
                  'Note that "flip" here means "reverse".',
         rationale="The coin was flipped by Bertram and Wendell, 2 times, an even number. "
                   "So the coin is still heads up.",
         answer="yes"),
    dict(question='A coin is heads up. Soraya flips the coin. Benedikt flips the coin. Ilse flips the coin. '
                  'Corbin does not flip the coin. Is the coin still heads up? '
                  'Note that "flip" here means "reverse".',
         rationale="The coin was flipped by Soraya, Benedikt and Ilse, 3 times, an odd number. "
                   "So the coin is tails up.",
         answer="no"),
    dict(question='A coin is heads up. Anouk does not flip the coin. Leopold flips the coin. Marguerite does '
                  'not flip the coin. Dario does not flip the coin. Is the coin still heads up? '
                  'Note that "flip" here means "reverse".',
         rationale="The coin was flipped only by Leopold, 1 time, an odd number. So the coin is tails up.",
         answer="no"),
    dict(question='A coin is heads up. Ezekiel flips the coin. Tamsin flips the coin. Rufus flips the coin. '
                  'Noemi flips the coin. Is the coin still heads up? Note that "flip" here means "reverse".',
         rationale="The coin was flipped by Ezekiel, Tamsin, Rufus and Noemi, 4 times, an even number. "
                   "So the coin is still heads up.",
         answer="yes"),
]

COMMONSENSE_QA = [
    dict(question="Where would you keep a carton of milk so that it stays cold? Answer choices: "
                  "(A) pantry, (B) cupboard, (C) refrigerator, (D) mailbox, (E) oven.",
         rationale="Milk has to be kept cold. A pantry, a cupboard, a mailbox and an oven do not "
                   "keep it cold, but a refrigerator does.",
         answer="C"),
    dict(question="How is someone likely to feel right after running a long race? Answer choices: "
                  "(A) lonely, (B) tired, (C) fresh, (D) taller, (E) lazy.",
         rationale="Running a long distance uses up a lot of energy. "
                   "So right after the race a runner is likely to feel tired.",
         answer="B"),
    dict(question="If you want to read a book without paying for it, where could you go? Answer choices: "
                  "(A) library, (B) bookstore, (C) printing press, (D) desk, (E) classroom.",
         rationale="A bookstore sells books, and a press or a desk does not lend them out. "
                   "Books can be borrowed for free from a library.",
         answer="A"),
    dict(question="What do people usually use to cut paper? Answer choices: "
                  "(A) spoon, (B) glue, (C) stapler, (D) pencil, (E) scissors.",
         rationale="A spoon, glue, a stapler and a pencil cannot cut anything. "
                   "Paper is cut with scissors, which have two sharp blades.",
         answer="E"),
]

AQUA = [
    dict(question="A shop sells pencils at 3 for $0.75. How much do 20 pencils cost? "
                  "Answer choices: (A) $4.00, (B) $4.50, (C) $5.00, (D) $5.25, (E) $6.00.",
         rationale="One pencil costs 0.75 / 3 = $0.25. So 20 pencils cost 20 * 0.25 = $5.00.",
         answer="C"),
    dict(question="A train travels 180 km in 2 hours and then 120 km in 3 hours. What is its average speed "
                  "for the whole journey? Answer choices: (A) 50 km/h, (B) 60 km/h, (C) 64 km/h, (D) 70 km/h, "
                  "(E) 75 km/h.",
         rationale="The train covers 180 + 120 = 300 km in 2 + 3 = 5 hours. Its average speed is 300 / 5 = 60 km/h.",
         answer="B"),
    dict(question="If 2x + 7 = 31, what is the value of x - 4? "
                  "Answer choices: (A) 8, (B) 10, (C) 12, (D) 14, (E) 16.",
         rationale="2x = 31 - 7 = 24, so x = 24 / 2 = 12. Then x - 4 = 12 - 4 = 8.",
         answer="A"),
    dict(question="The price of a coat is raised by 20% and then lowered by 25%. By what percent is the final "
                  "price lower than the original? Answer choices: (A) 5%, (B) 8%, (C) 10%, (D) 12%, (E) 15%.",
         rationale="A price of 100 is raised to 100 * 1.2 = 120 and lowered to 120 * 0.75 = 90. "
                   "That is 100 - 90 = 10 less than the original, 10% of it.",
         answer="C"),
]

WRITTEN = {
    "aqua": AQUA,  # for a test-only conversion (AQuA's 97,467-question train file is not always at hand)
    "single_eq": MATH,
    "addsub": MATH,
    "multiarith": MATH,
    "svamp": MATH,
    "date_understanding": DATE_UNDERSTANDING,
    "tracking_shuffled_objects": TRACKING_SHUFFLED_OBJECTS,
    "last_letter_concatenation": LAST_LETTER_CONCATENATION,
    "coin_flip": COIN_FLIP,
    "commonsense_qa": COMMONSENSE_QA,
}


def exemplars(task, train_rows, n):
    """n exemplars ({"question", "rationale", "answer"}, "id" where one is a train row) for a
    pretrained model's few-shot prompt: the first train rows with a gold rationale of one
    line and at most 400 characters where the dataset has gold rationales (GSM8K, AQuA,
    StrategyQA; their answer line is cut off, as the prompt adds its own), else the ones
    written above. The scripts leave the train rows shown here out of rationale collection."""
    if n == 0:
        return []
    gold = []
    for r in train_rows:
        body, sep, _ = (r.get("rationale") or "").rpartition(task.ANSWER_PREFIX)
        if sep and body.strip() and "\n" not in body and len(body) <= 400:
            gold.append({"id": r["id"], "question": r["question"], "rationale": body.strip(), "answer": r["answer"]})
            if len(gold) == n:
                return gold
    if gold:
        return gold  # fewer than asked for: the train split has no more
    if task.name not in WRITTEN:
        raise ValueError(f"no few-shot exemplars for task '{task.name}' (no gold rationales in its train "
                         f"split, none written in data/fewshot.py): pass --shots 0")
    return [dict(e) for e in WRITTEN[task.name][:n]]
