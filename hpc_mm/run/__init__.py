"""The run directory and its records, readable without torch: the layout's names (`layout`),
`events.jsonl` (`events`), the checkpoint tracker (`checkpoints`) and the report (`report`).
"""
