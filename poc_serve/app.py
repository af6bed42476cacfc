"""The poc_serve application: ``serve run serve_config.yaml`` imports :func:`build_app`;
:func:`assemble_app` is the one place where the deployments are assembled (tests and benchmarks
call it with a stand-in ``engine_factory``)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from ray.serve import Application

from poc_serve.serve.config import PoCAppArgs
from poc_serve.serve.engine_deployment import PoCEngineDeployment
from poc_serve.serve.ingress import PoCIngress

__all__ = ["PoCAppArgs", "assemble_app", "build_app", "engine_deployment_options"]


def engine_deployment_options(args: PoCAppArgs) -> dict[str, Any]:
    """Serve options of the engine deployment: replicas, resources, placement of vLLM workers."""
    engine = args.engine
    actor_options: dict[str, Any] = {"num_cpus": args.engine_num_cpus,
                                     "runtime_env": {"env_vars": dict(args.engine_env)}}
    options: dict[str, Any] = {
        "num_replicas": args.num_engine_replicas,
        # PoC calls and inference requests have separate bounds: the round manager keeps
        # batches_in_flight_per_replica calls per replica, and vLLM's scheduler batches the
        # inference requests. A shared cap of 4 made 64 concurrent completions run four at a time
        # (~1,060 output tokens/s on one H200 against 10,842 engine-direct). The 2: a validation
        # and a health check.
        "max_ongoing_requests": args.batches_in_flight_per_replica + args.max_inference_requests_per_replica + 2,
    }
    if args.accelerator == "gpu":
        # The replica takes no GPU itself: it lives in bundle 0 of its own placement group, and
        # vLLM's Ray executor places one worker per GPU bundle of that group.
        gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
        actor_options["num_gpus"] = 0
        options["placement_group_bundles"] = (
            [{"CPU": args.engine_num_cpus, "GPU": 1, **args.engine_resources}] + [{"GPU": 1}] * (gpus - 1))
        options["placement_group_strategy"] = args.placement_strategy
    elif args.engine_resources:
        actor_options["resources"] = dict(args.engine_resources)
    options["ray_actor_options"] = actor_options
    return options


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder (Serve calls it with the config's ``args`` and allows it no
    other parameter): validate ``args`` (:class:`PoCAppArgs`) and assemble the application."""
    return assemble_app(PoCAppArgs.model_validate(args))


def assemble_app(args: dict[str, Any] | PoCAppArgs,
                 engine_factory: Callable[[Any], Awaitable[Any]] | None = None) -> Application:
    """Wire the deployments for ``args``; ``engine_factory`` (tests, benchmarks) builds each
    replica's engine instead of vLLM."""
    app_args = args if isinstance(args, PoCAppArgs) else PoCAppArgs.model_validate(args)
    factory = {"engine_factory": engine_factory} if engine_factory else {}
    engine = PoCEngineDeployment.options(**engine_deployment_options(app_args)).bind(app_args.serving(), **factory)
    ingress_actor = {"num_cpus": 0, **({"resources": dict(app_args.ingress_resources)}
                                       if app_args.ingress_resources else {})}
    return PoCIngress.options(ray_actor_options=ingress_actor).bind(engine, app_args)
