"""Benchmarks: ``tsvllm bench hooks`` (retrieval, embedding, rule guards).

Benchmarks measure and report; they never assert wall-clock times (tests don't either).
"""
