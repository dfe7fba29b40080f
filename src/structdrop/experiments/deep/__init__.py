"""Figure 2 (Sec. 5.2): a ResNet-50 with structured dropout on its last hidden layer.

The network is ``x -> ResNet-50 trunk -> Linear(2048, 80) -> dropout -> Linear(80, a) -> y``,
trained with the squared loss to one-hot targets, summed over samples. With ``G`` the 80-d
features (d x N, one column per sample) and ``U`` the last layer's weight (a x d, no bias, as
in the paper's ``U G``), the masks make training SGD on (Thm 3.1, eq. 13-15)::

    E_z ||Y - U diag(mu)^-1 diag(z) G||^2 = ||Y - U G||^2 + <Cbar, (U^T U) * (G G^T)>.

Every epoch this deterministic objective is evaluated on the whole training set (eval mode, no
masks) next to the stochastic training loss. If the trunk can produce any features (sufficient
capacity, Prop. 3.3), the least value over ``(U, G)`` is that of the features-space problem::

    min_A ||Y - A||^2 + beta ||A||_(r)^2,   beta = (r/d)(1-theta)/theta,

the spectral r-support norm for GridBlock (Thm 2.7, corrected in docs/theory.md) and the squared
nuclear norm with weight ``(1-theta)/(theta d)`` for Dropout (Prop. 3.3 with its missing 1/d,
docs/theory.md). It is a lower bound at width d for every ``(U, G)``. Its minimizer is the prox of
the one-hot ``Y``, whose singular values are ``sqrt(n_c)`` (class counts): the figure's right
panel compares them, shrunk, with the singular values of the trained ``U G``.

The modules, in the order of a run (each imported by name: ``from
structdrop.experiments.deep.recipe import train``):

* :mod:`.config`: :class:`~.config.DeepConfig` (every field with its help text), the mask law
  and the names of results and checkpoints; it needs no torch, so that the command line reads
  its options without loading torch;
* :mod:`.data`: the image data sets: their files, how they are read and checked, their
  download through torchvision, and the tensors a run trains on;
* :mod:`.model`: the network, which knows nothing of training;
* :mod:`.parallel`: processes, devices and random streams;
* :mod:`.recipe`: the recipe, top to bottom: setup, epochs, the evaluation of the head (with
  :class:`structdrop.HeadMonitor` and :func:`structdrop.head_report`) and the verified
  checkpoint;
* :mod:`.experiment`: the run, its figure, results and timings;
* :mod:`.sweep`: the grid of runs over laws, rates and data sets, and what it shows.

Run it with ``structdrop reproduce deep`` (``python -m structdrop reproduce deep``) or, on
several processes or GPUs, ``torchrun --nproc-per-node 2 -m structdrop reproduce deep``. A
checkpoint is written at the end of an epoch once a minute; a killed run resumes from it.
"""
