import datasets
import numpy as np
import pytest
from PIL import Image

from hf_sparsify.data import CalibrationData, CalibrationDataError, find_columns, load_image_dataset, random_indices


def _sorted_dataset(n_per_class=20, classes=4):
    images = [Image.fromarray(np.full((8, 8, 3), 10 * c, dtype=np.uint8)) for c in range(classes) for _ in range(n_per_class)]
    labels = [c for c in range(classes) for _ in range(n_per_class)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(classes)])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


class _Processor:
    def __call__(self, images, return_tensors="pt"):
        import torch

        return {"pixel_values": torch.stack([torch.as_tensor(np.array(i), dtype=torch.float32).permute(2, 0, 1) / 255 for i in images])}


def test_random_indices_are_seeded_and_not_the_first_rows():
    a = random_indices(1000, 50, seed=0)
    assert a == random_indices(1000, 50, seed=0) and a != random_indices(1000, 50, seed=1)
    assert len(set(a)) == 50 and a != list(range(50))


def test_dataset_calibration_draws_every_class_from_a_sorted_dataset():
    ds = _sorted_dataset()
    data = CalibrationData.from_source(ds, image_processor=_Processor(), batch_size=8, num_samples=16, seed=0)
    labels = [int(l) for batch in data for l in batch["labels"]]
    assert len(labels) == 16 and len(set(labels)) >= 3  # the first 16 rows would all be class 0
    again = [int(l) for batch in data for l in batch["labels"]]
    assert labels == again  # re-iterable, same subset
    more = list(data.iter_batches(5))
    assert len(more) == 5  # a second pass is drawn with a new seed


def test_find_columns():
    ds = _sorted_dataset()
    assert find_columns(ds) == ("image", "label")
    with pytest.raises(CalibrationDataError, match="no image column"):
        find_columns(datasets.Dataset.from_dict({"x": [1, 2]}))


def test_one_shot_generator_is_consumed_once():
    import torch

    batches = ({"pixel_values": torch.randn(2, 3, 8, 8)} for _ in range(2))
    data = CalibrationData.from_source(batches)
    assert len(list(data)) == 2
    with pytest.raises(CalibrationDataError, match="one-shot"):
        list(data)


def test_load_image_dataset_from_every_local_layout(tmp_path):
    ds = _sorted_dataset(n_per_class=3, classes=2)
    parquet = tmp_path / "train.parquet"
    ds.to_parquet(str(parquet))
    assert len(load_image_dataset(parquet)) == 6
    (tmp_path / "splits").mkdir()
    ds.to_parquet(str(tmp_path / "splits" / "test.parquet"))
    assert len(load_image_dataset(tmp_path / "splits", split="test")) == 6
    with pytest.raises(CalibrationDataError, match="not 'train'"):
        load_image_dataset(tmp_path / "splits", split="train")
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "disk"))
    assert len(load_image_dataset(tmp_path / "disk", split="test")) == 6
    folder = tmp_path / "images" / "train"
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    loaded = load_image_dataset(tmp_path / "images", split="train")
    assert len(loaded) == 4 and find_columns(loaded) == ("image", "label")
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_image_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="empty folder"):
        load_image_dataset(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(CalibrationDataError, match="must be .parquet"):
        load_image_dataset(tmp_path / "x.csv")


# --------------------------------------------------------------------------------------------- validation
def _images(sizes):
    return [Image.fromarray(np.zeros((s, s, 3), dtype=np.uint8)) for s in sizes]


def test_text_labels_are_not_a_label_column_and_are_refused_where_labels_are_needed():
    from hf_sparsify.data import check_dataset_labels

    ds = datasets.Dataset.from_dict({"image": _images([8] * 3), "label": ["cat", "dog", "cat"]}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}))
    assert find_columns(ds) == ("image", None)  # label-free methods read it without labels
    check_dataset_labels(ds, num_labels=10, required=False)
    with pytest.raises(CalibrationDataError, match=r"holds string values \('cat', 'dog', 'cat'\), not class indices that cap can use.*class_encode_column\('label'\)"):
        check_dataset_labels(ds, num_labels=10, required=True, method="cap")
    # the same through prune's calibration path (Python API)
    with pytest.raises(CalibrationDataError, match="not class indices"):
        CalibrationData.from_source(ds, image_processor=_Processor(), needs_labels=True, method="cap")
    data = CalibrationData.from_source(ds, image_processor=_Processor(), batch_size=3)
    assert not data.has_labels and next(iter(data))["pixel_values"].shape == (3, 3, 8, 8)


def test_labels_outside_the_models_classes_are_refused():
    import torch
    import transformers

    from hf_sparsify.data import check_dataset_labels

    ds = datasets.Dataset.from_dict({"image": _images([8] * 3), "label": [0, 12, 3]})
    with pytest.raises(CalibrationDataError, match="labels in column 'label' go from 0 to 12, but the model has 10 classes"):
        check_dataset_labels(ds, num_labels=10, required=True)
    check_dataset_labels(ds, num_labels=13, required=True)
    check_dataset_labels(ds, num_labels=10, required=False)  # a method that ignores labels does not care
    model = transformers.ViTForImageClassification(transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=8, patch_size=4, num_labels=10))
    with pytest.raises(CalibrationDataError, match="go from 0 to 12"):
        CalibrationData.from_source(ds, model=model, image_processor=_Processor(), needs_labels=True)
    with pytest.raises(CalibrationDataError, match="labels must be class indices"):
        CalibrationData.from_source([{"pixel_values": torch.zeros(2, 3, 8, 8), "labels": ["cat", "dog"]}])


def test_images_of_mixed_sizes_are_one_clear_error():
    from transformers import ViTImageProcessor

    from hf_sparsify.data import dataset_batches

    ds = datasets.Dataset.from_dict({"image": _images([8, 16, 8]), "label": [0, 1, 2]}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    no_resize = ViTImageProcessor(do_resize=False)
    with pytest.raises(CalibrationDataError, match=r"different sizes \(16×16, 8×8\).*do_resize=False"):
        list(dataset_batches(ds, [0, 1, 2], 3, no_resize, image_column="image", label_column="label"))
    resized = next(dataset_batches(ds, [0, 1, 2], 3, ViTImageProcessor(size={"height": 8, "width": 8}), image_column="image", label_column="label"))
    assert resized["pixel_values"].shape == (3, 3, 8, 8)
    arrays = datasets.Dataset.from_dict({"pixel_values": [np.zeros((3, s, s), dtype=np.float32) for s in (8, 16)], "label": [0, 1]})
    with pytest.raises(CalibrationDataError, match=r"'pixel_values' arrays have different shapes \(\(3, 8, 8\), \(3, 16, 16\)\)"):
        list(dataset_batches(arrays, [0, 1], 2, None, image_column="pixel_values", label_column="label"))


def test_an_empty_dataset_is_refused_when_loaded(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).to_parquet(str(tmp_path / "train.parquet"))
    for source in (tmp_path / "train.parquet", tmp_path):
        with pytest.raises(CalibrationDataError, match="holds no rows"):
            load_image_dataset(source, split="train")


class _CountingProcessor(_Processor):
    """Counts the images it preprocesses."""

    def __init__(self):
        self.images = 0

    def __call__(self, images, return_tensors="pt"):
        self.images += len(images)
        return super().__call__(images, return_tensors)


def _labels(batches):
    return [[int(x) for x in b["labels"]] for b in batches]


def test_a_window_builds_only_its_batches_and_continues_the_pass():
    ds = _sorted_dataset()  # 80 rows
    processor = _CountingProcessor()
    data = CalibrationData.from_source(ds, image_processor=processor, batch_size=8, num_samples=24, seed=0)  # 3 batches a pass
    reference = _labels(CalibrationData.from_source(ds, image_processor=_Processor(), batch_size=8, num_samples=24, seed=0).iter_batches(10))
    processor.images = 0
    window = data.window(4, 7)  # pass 1 (batches 3..5) is skipped to its second batch; pass 2 starts
    assert len(window) == 3 and _labels(window) == reference[4:7]
    assert processor.images == 3 * 8  # the skipped batches were not preprocessed
    assert _labels(data.window(7, 10)) == reference[7:10] and processor.images == 6 * 8  # continued, not redrawn
    assert _labels(data.window(4, 7)) == reference[4:7]  # the same window again: the same batches
    assert _labels(data.iter_batches(2, start=1)) == reference[1:3]


def test_each_process_builds_only_its_share_of_a_window():
    ds = _sorted_dataset()
    processor = _CountingProcessor()
    data = CalibrationData.from_source(ds, image_processor=processor, batch_size=8, num_samples=24, seed=0)
    processor.images = 0
    share = list(data.window(0, 6).indexed(process_index=1, num_processes=2))
    assert [i for i, _ in share] == [1, 3, 5] and processor.images == 3 * 8
    whole = _labels(data.window(0, 6))
    assert _labels(b for _, b in share) == whole[1::2]


def test_windows_of_lists_dataloaders_and_generators():
    import torch

    batches = [{"pixel_values": torch.full((2, 3, 8, 8), float(i)), "labels": torch.tensor([i, i])} for i in range(3)]
    data = CalibrationData.from_source(batches)
    assert [int(b["labels"][0]) for b in data.window(2, 7)] == [2, 0, 1, 2, 0]  # pass after pass
    assert data.source_batch_size() == 2 and not data.rebatchable
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(10, 3, 8, 8), torch.arange(10)), batch_size=4)
    assert CalibrationData.from_source(loader).source_batch_size() == 4
    assert CalibrationData.from_source(_sorted_dataset(), image_processor=_Processor(), batch_size=8).rebatchable
    # a one-shot generator: consecutive windows continue it; going back is refused
    generator = CalibrationData.from_source(b for b in batches)
    assert [int(b["labels"][0]) for b in generator.window(0, 2)] == [0, 1]
    assert [int(b["labels"][0]) for b in generator.window(2, 3)] == [2]
    with pytest.raises(CalibrationDataError, match="one-shot"):
        list(generator.window(0, 1))
