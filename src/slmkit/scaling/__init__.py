"""Scaling: compute-optimal sizing (laws), training-memory estimates, and fitting our own laws.

    laws.py    Chinchilla (approaches 1 and 3), Epoch's replication, Kaplan, and laws fitted by `slm sweep`
    memory.py  memory per device for weights, gradients, optimizer state and activations
    fit.py     IsoFLOP parabolas, power laws and the parametric L(N, D), with bootstrap intervals
    shapes.py  a model shape (layers, width, heads) for a parameter count
"""
