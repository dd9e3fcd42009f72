"""Catalogs, labelled pairs and record serialization."""

from epm_edge.data.catalog import Catalog, read_catalog
from epm_edge.data.pairs import LabelledPairs, PairSet, load_pair_set
from epm_edge.data.serialize import serialize_record

__all__ = ["Catalog", "read_catalog", "LabelledPairs", "PairSet", "load_pair_set", "serialize_record"]
