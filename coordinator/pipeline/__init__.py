"""The six stages of answering a query, one module each, composed by ``answer.answer_query``."""
