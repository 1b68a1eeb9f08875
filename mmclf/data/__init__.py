"""Data: raw files -> canonical rows -> the DatasetDict every expert reads.

readers.py      the ENS, SIGIR and generic file readers (errors name file, row and column)
rows.py         row preparation: text cleaning, class codes, image lookup, listings -> expert-ready rows
build.py        the dataset build (`mmclf build-dataset`)

The synthetic demo catalog (`mmclf demo-data`) is mmclf/demo_catalog.py, outside data/: it writes raw files,
it does not read them.
"""
