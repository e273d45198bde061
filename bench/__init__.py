"""Benchmarks for the dataset builder: stage throughput, overlap, img2dataset comparison, memory."""
