"""The math of every bound and loss, one module each: the masking process as the bounds draw it
(:mod:`.masking`), SUBS per-token losses (:mod:`.nll`), MDLM's continuous and discrete NELBO
(:mod:`.mdlm`), the AR baseline (:mod:`.ar`), SEDD (:mod:`.sedd`), D3PM (:mod:`.d3pm`), block
diffusion (:mod:`.blocks`), and uniform-state diffusion (Duo: :mod:`.uniform`, its Gaussian relaxation
:mod:`.relaxation`). Which of them a run trains with is decided by its model kind (:mod:`unmask.kinds`),
never here."""
