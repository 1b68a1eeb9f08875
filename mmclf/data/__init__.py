"""Data: raw files -> canonical rows -> the DatasetDict every expert reads.

readers.py      the ENS, SIGIR and generic file readers (errors name file, row and column)
rows.py         row preparation: text cleaning, class codes, image lookup, listings -> expert-ready rows
build.py        the dataset build (`mmclf build-dataset`)
demo_catalog.py the synthetic demo catalog (`mmclf demo-data`)
"""
