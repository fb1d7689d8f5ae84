"""Models from outside unmask, and unmask models going back out.

- :mod:`.folders`: what a folder is (unmask run, released MDLM, Hugging Face masked LM), hub names
  fetched through the hub cache, safetensors-only weight reading;
- :mod:`.reference`: the released MDLM layout (config.json fields, ``backbone.*`` names) and its
  exact map to unmask's DiT;
- :mod:`.released`: loading a released MDLM folder; :mod:`.masked_lm`: a Hugging Face masked LM as
  a denoiser;
- :mod:`.lightning`: ``unmask convert`` of the reference's Lightning checkpoints;
- :mod:`.export_hf` and :mod:`.hf_tokenizer`: ``unmask export --format hf``.
"""

from unmask.interop.duo import load_released_duo
from unmask.interop.export_hf import Export, export_hf
from unmask.interop.folders import MASKED_LM, RELEASED_DUO, RELEASED_MDLM, UNMASK, folder_format, is_hub_name, locate
from unmask.interop.lightning import Conversion, PickleRefused, convert_lightning
from unmask.interop.masked_lm import MaskedLMDenoiser, load_masked_lm
from unmask.interop.released import load_released

__all__ = [
    "MASKED_LM",
    "RELEASED_DUO",
    "RELEASED_MDLM",
    "UNMASK",
    "Conversion",
    "Export",
    "MaskedLMDenoiser",
    "PickleRefused",
    "convert_lightning",
    "export_hf",
    "folder_format",
    "is_hub_name",
    "load_masked_lm",
    "load_released",
    "load_released_duo",
    "locate",
]
