"""Fine-tune the answer writer on the user's questions and answers, in the service's own prompt.

Run ``python -m generator_service.finetune --help``. The pieces: ``data`` reads question/answer
files, ``contexts`` finds each question's snippets (its own ``context``, or the running gateway
as /v1/ask would), ``examples`` renders them through the served prompt builder, ``train`` runs
full or LoRA fine-tuning, ``evaluate`` measures a held-out split before and after, and
``output`` writes a directory the generator serves as it is.
"""
