"""Data in: MovieLens readers and the synthetic demo shop; pure parsing and generation, no I/O beyond files."""

from app.datasets.demo import DEMO_NOW, DemoConfig, DemoShop, build_demo_shop, generate_demo
from app.datasets.errors import DatasetFormatError
from app.datasets.movielens import EventStream, Layout, detect_layout, read_movielens

__all__ = [
    "DEMO_NOW",
    "DatasetFormatError",
    "DemoConfig",
    "DemoShop",
    "EventStream",
    "Layout",
    "build_demo_shop",
    "detect_layout",
    "generate_demo",
    "read_movielens",
]
