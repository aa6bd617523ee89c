"""A ChartQA-shaped parquet file written by Hugging Face `datasets` (its `Image` feature stores
`{bytes, path}` structs), for the parquet row reader, the bad-row handling and the fuzz tests.

Row 1's image bytes are not an image (a corrupt upload): `on_bad_example` must name
`chartqa_like.parquet:row 1`.
"""

from pathlib import Path

import datasets

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/fixtures/sft/images"
OUT = ROOT / "tests/fixtures/data/chartqa_like.parquet"


def main():
    png = lambda name: {"bytes": (IMAGES / name).read_bytes(), "path": None}
    ds = datasets.Dataset.from_dict(
        {
            "image": [png("gray.png"), {"bytes": b"not an image", "path": None}, png("one_tile.png")],
            "query": ["What is the color?", "Which bar is highest?", "How many bars?"],
            "label": [["gray"], ["red"], ["5"]],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(decode=False),
                "query": datasets.Value("string"),
                "label": datasets.Sequence(datasets.Value("string")),
            }
        ),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
