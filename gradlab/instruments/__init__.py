"""The instrument maths, torch only: the exact per-time-step adjoint of fused recurrent
layers, the recurrent spectrum, saturation, gradient norms and update ratios, and the search
for the first non-finite value. One implementation, imported by the service's worker
(worker/instruments/) and by `gradlab.watch` in a user's own loop. Importing `gradlab` does
not load this package (torch is optional for the client)."""
