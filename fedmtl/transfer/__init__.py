"""Knowledge transfer from the federated encoder (no Flower): new users, new items, new tasks.

- New users (`transfer.new_users=f`, held out by `fedmtl.data.holdout`): after training,
  each new user's client receives the final shared arrays, builds its personal parts from
  what it has (its features: the user embedding starts at zero, so the user tower sees
  the features alone; the heads are the aggregated ones where `aggregate=all` shares
  them, else fresh) and fine-tunes them (`transfer.tune`: its embedding and biases, or the
  heads too), the encoder frozen, on its first k interactions by timestamp. Every k is scored on the same interactions, those after the first
  max(k), ranked among the items outside the first max(k). The same procedure runs on
  the untrained (seeded round-0) encoder ("scratch"), and popularity is scored on the
  same rows.
- New items (`transfer.new_items=f`): hidden from training (no train row, never a
  negative of the click softmax). Clients score them through their features alone:
  their id embedding is zero and their item bias the mean of the known items'. Test
  metrics are also reported on the new-item and the known-item test rows separately
  ("new_items/..." and "known_items/..."), each ranked among all items.
- New task: `init.from=RUN_DIR` starts a run from another run's encoder
  (`fedmtl.model.saved`); `python -m fedmtl.transfer curves` compares learning curves
  (rounds to a target, final metric).

The modules:

- checks.py: the init.* and transfer.* config keys (called from `config.validate`);
- new_items.py: the new-item hooks every mode's client runs (features-only scoring,
  the new-item / known-item metric parts);
- references.py: the reference scorers (popularity, random);
- new_users.py: a new user's cold start (fine-tuning per k) and its scores;
- evaluation.py: the transfer evaluations of a finished run, into transfer.json / transfer.md;
- tables.py: the transfer.md tables;
- curves.py: learning curves of run folders (rounds to a target; `curves` on the command line);
- cli.py: `python -m fedmtl.transfer curves | table | evaluate` (`__main__.py` runs it).

This __init__ imports nothing, so the core and the config checks, which import
new_items and checks, load neither the command line nor the cold-start code.
"""
