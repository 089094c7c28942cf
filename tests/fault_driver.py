"""
A tiny shapes-world training in its own process, with faults injected (used by tests/test_reliability_*.py).

    python tests/fault_driver.py --data DIR --output OUT --max-iter N [--resume] [--kill-at ITER]
        [--kill-in-save ITER] [--workers W] [KEY VALUE ...]

--kill-at ITER: SIGKILL before iteration ITER runs. --kill-in-save ITER: SIGKILL half-way through writing the
checkpoint of iteration ITER (the file is half written). The final weights go to OUT/model_final.pth as usual.
"""
import argparse
import io
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--max-iter", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--kill-in-save", type=int, default=-1)
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from detectron2.engine import HookBase
    from detectron2.engine.defaults import default_setup

    from mask2former.engine.trainer import MaskFormerTrainer
    from test_training_e2e import register_data, tiny_cfg

    register_data(args.data)
    overrides = dict(zip(args.opts[::2], args.opts[1::2]))
    overrides.setdefault("SOLVER.CHECKPOINT_PERIOD", 5)
    overrides.setdefault("DATASETS.TEST", "()")
    cfg = tiny_cfg(args.output, **{"SOLVER.MAX_ITER": args.max_iter, **overrides})
    default_setup(cfg, argparse.Namespace(config_file="", resume=args.resume, eval_only=False))

    if args.kill_in_save >= 0:
        real_save = torch.save
        target = f"model_{args.kill_in_save:07d}.pth"

        def save_then_die(obj, f, *a, **k):
            if getattr(f, "name", "").endswith(".tmp-%d" % os.getpid()) and target in f.name:
                buffer = io.BytesIO()
                real_save(obj, buffer, *a, **k)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)

        torch.save = save_then_die

    class KillAt(HookBase):
        def before_step(self):
            if self.trainer.iter == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    trainer = MaskFormerTrainer(cfg)
    trainer.register_hooks([KillAt()])
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


if __name__ == "__main__":
    main()
