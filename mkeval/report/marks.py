"""The symbols a number carries beside it, in every table and figure, and when a score earns one.

A result's marks (``docs/results.md``) are shown beside the number they concern: ``MARK_COLUMN``
names that number's column. Downstream scores have marks of their own (ties, truncated prompts,
fewer shots than asked).
"""

# where each mark is shown, and its symbol
MARK_SYMBOLS = {"test_contamination": "‡", "valid_is_train_text": "†", "size_not_matched": "≠",
                "flops_incomplete": "*"}
MARK_COLUMN = {"test_contamination": "test ppl", "valid_is_train_text": "val ppl", "size_not_matched": "params",
               "flops_incomplete": "GFLOP/step"}
TIE_SYMBOL, TRUNCATED_SYMBOL, FEWER_SHOTS_SYMBOL = "◊", "✂", "↓"
TRUNCATED_SHARE = 0.05  # prompts cut inside the question beyond this share mark a score
