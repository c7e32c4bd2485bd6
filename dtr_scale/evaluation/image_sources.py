"""Random-access readers of uint8 image sets: an .npz member, a folder of .npz files, or images.

Every reader answers `len(reader)` and `reader.read(start, stop)` → uint8 array (n, H, W, C),
so each rank reads only its own contiguous slice. For an .npz, `np.load(mmap_mode=...)` does NOT
memory-map members (NpzFile reads a member whole), so we open the zip ourselves:
- a STORED (uncompressed, `np.savez`) member is memory-mapped at its byte offset in the file;
- a DEFLATED (`np.savez_compressed`) member is streamed: zipfile decompresses forward to the
  slice start and reads only the rows asked for.
"""
from __future__ import annotations

import glob
import os
import struct
import zipfile

import numpy as np

from ..errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)


def _normalise_shape(shape: tuple, where: str) -> tuple:
    if len(shape) == 3:  # (N, H, W) grayscale
        return (*shape, 1)
    if len(shape) == 4 and shape[3] in (1, 3):
        return tuple(shape)
    raise UserError(
        f"{where}: expected uint8 images shaped (N, H, W, 3), (N, H, W, 1) or (N, H, W) "
        f"(NHWC, as the ADM evaluator reads them), got shape {tuple(shape)}; "
        "transpose NCHW arrays with arr.transpose(0, 2, 3, 1)"
    )


class NpzImages:
    """One member (default `arr_0`) of an .npz file, read by slices."""

    def __init__(self, path: str, key: str = "arr_0"):
        self.path, self.key = path, key
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is not an .npz archive (np.savez writes one); save the images with "
                            "np.savez(path, images) with images NHWC uint8")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if f"{key}.npy" not in names:
                members = ", ".join(n[:-4] for n in names if n.endswith(".npy"))
                raise UserError(
                    f"{path} has no '{key}' array (it holds: {members or 'nothing'}); "
                    "image batches must store NHWC uint8 images under 'arr_0' (np.savez(path, images))"
                )
            info = zf.getinfo(f"{key}.npy")
            with zf.open(info) as f:
                shape, fortran, dtype = self._read_header(f)
                self._member_header_len = f.tell()
        if dtype != np.uint8:
            raise UserError(
                f"{path}:{key} has dtype {dtype}; the evaluator expects uint8 pixels in [0, 255] "
                "(convert with np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for [0, 1] floats)"
            )
        if fortran:
            raise UserError(f"{path}:{key} is Fortran-ordered; save it with np.ascontiguousarray")
        self.raw_shape = tuple(shape)
        self.shape = _normalise_shape(self.raw_shape, f"{path}:{key}")
        self._row_bytes = int(np.prod(self.raw_shape[1:]))
        self._info = info
        self._memmap = None
        self._stream = None
        if info.compress_type == zipfile.ZIP_STORED:
            self._memmap = np.memmap(path, dtype=np.uint8, mode="r", shape=self.raw_shape,
                                     offset=self._stored_data_offset(info))

    @staticmethod
    def _read_header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise UserError(f"unsupported .npy format version {version}")

    def _stored_data_offset(self, info: zipfile.ZipInfo) -> int:
        # The central directory's extra-field length may differ from the local header's, so the
        # data start is read from the local header itself.
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        name_len, extra_len = fields[-2], fields[-1]
        return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + self._member_header_len

    def _stream_read(self, start: int, stop: int) -> bytes:
        # One open stream per reader: consecutive slices continue where the last one ended
        # instead of decompressing the member from its beginning again.
        if self._stream is None:
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(self._info)
            self._stream_row = None
        if self._stream_row != start:
            self._stream.seek(self._member_header_len + start * self._row_bytes)
        want = (stop - start) * self._row_bytes
        buf = self._stream.read(want)
        if len(buf) != want:
            raise UserError(f"{self.path}:{self.key} is truncated (rows {start}..{stop} missing)")
        self._stream_row = stop
        return buf

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._zip.close()
            self._stream = None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, len(self))
        if self._memmap is not None:
            block = np.array(self._memmap[start:stop])
        else:
            block = np.frombuffer(bytearray(self._stream_read(start, stop)), dtype=np.uint8)
            block = block.reshape((stop - start, *self.raw_shape[1:]))
        return block.reshape((stop - start, *self.shape[1:]))


class ConcatImages:
    """Several readers seen as one index space, in the given order (e.g. sample shards)."""

    def __init__(self, parts: list, where: str):
        if not parts:
            raise UserError(f"{where}: no images found")
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise UserError(f"{where}: the files hold images of different shapes {sorted(shapes)}")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        out = []
        for i, part in enumerate(self.parts):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                out.append(part.read(lo - self.offsets[i], hi - self.offsets[i]))
        return np.concatenate(out) if out else np.zeros((0, *self.shape[1:]), np.uint8)


class FolderImages:
    """PNG/JPG files under a folder (recursive, sorted by relative path)."""

    def __init__(self, files: list[str], where: str):
        from PIL import Image

        self.files, self.where = files, where
        with Image.open(files[0]) as im:
            # Grayscale stays one channel (pixel-space features of tiny data); all else is RGB.
            self.mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
            first = self._load(files[0])
        self.shape = (len(files), *first.shape)

    def _load(self, path: str) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, min(stop, len(self)) - start), *self.shape[1:]), np.uint8)
        for i in range(out.shape[0]):
            img = self._load(self.files[start + i])
            if img.shape != out.shape[1:]:
                raise UserError(
                    f"{self.files[start + i]} is {img.shape}, but {self.files[0]} is {out.shape[1:]}; "
                    f"all images in {self.where} must have the same size"
                )
            out[i] = img
        return out


def list_image_files(folder: str) -> list[str]:
    files = [
        p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)
    ]
    return sorted(files, key=lambda p: os.path.relpath(p, folder))


def open_images(path: str):
    """A reader for an .npz file (`arr_0`), a folder of .npz files, or a folder of PNG/JPG."""
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise UserError(f"{path}: expected an .npz file (arr_0 = NHWC uint8) or a folder")
        return NpzImages(path)
    if not os.path.isdir(path):
        raise UserError(f"{path} does not exist (expected an .npz file or a folder of images)")
    npz_files = sorted(glob.glob(os.path.join(path, "*.npz")))
    if npz_files:
        return ConcatImages([NpzImages(p) for p in npz_files], path)
    files = list_image_files(path)
    if not files:
        raise UserError(f"{path} holds no .npz files and no {'/'.join(IMAGE_EXTENSIONS)} images")
    return FolderImages(files, path)
