"""The ``google.cloud.tasks.v2.CloudTasks`` gRPC service on generic method handlers.

Request and response classes are the raw protobuf classes behind the proto-plus types that
``google-cloud-tasks`` ships, so no generated servicer is needed. RPCs the emulator does not
implement (IAM, CMEK, batch) are not registered and answer UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.cloud.tasks_v2.types import cloudtasks
from google.protobuf import empty_pb2

from emulators.cloudtasks.core import Emulator, QueuePb, TaskPb
from emulators.cloudtasks.errors import RpcError

SERVICE_NAME = "google.cloud.tasks.v2.CloudTasks"

_Handler = Callable[[Any, grpc.ServicerContext], Any]


def _wrap(func: Callable[[Any], Any]) -> _Handler:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return func(request)
        except RpcError as exc:
            context.abort(exc.code, exc.message)

    return handler


def _wrap_async(func: Callable[[Any], Any]) -> Callable[[Any, Any], Awaitable[Any]]:
    # The core only holds short, uncontended locks, so calling it straight from the event
    # loop is cheaper than the thread hand-off a synchronous gRPC server pays per call.
    async def handler(request: Any, context: Any) -> Any:
        try:
            return func(request)
        except RpcError as exc:
            await context.abort(exc.code, exc.message)

    return handler


def build_handler(emulator: Emulator, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:
    """A generic handler that routes every implemented CloudTasks RPC to ``emulator``.

    ``asynchronous=True`` builds coroutine handlers for a ``grpc.aio`` server.
    """
    queue_pb: Any = QueuePb
    task_pb: Any = TaskPb

    def list_queues(req: Any) -> Any:
        queues, token = emulator.list_queues(req.parent, req.filter, req.page_size, req.page_token)
        return cloudtasks.ListQueuesResponse.pb()(queues=queues, next_page_token=token)

    def list_tasks(req: Any) -> Any:
        tasks, token = emulator.list_tasks(
            req.parent, req.response_view, req.page_size, req.page_token
        )
        return cloudtasks.ListTasksResponse.pb()(tasks=tasks, next_page_token=token)

    def delete_queue(req: Any) -> Any:
        emulator.delete_queue(req.name)
        return empty_pb2.Empty()

    def delete_task(req: Any) -> Any:
        emulator.delete_task(req.name)
        return empty_pb2.Empty()

    routes: dict[str, tuple[Any, Any, Callable[[Any], Any]]] = {
        "ListQueues": (cloudtasks.ListQueuesRequest, cloudtasks.ListQueuesResponse, list_queues),
        "GetQueue": (cloudtasks.GetQueueRequest, queue_pb, lambda r: emulator.get_queue(r.name)),
        "CreateQueue": (
            cloudtasks.CreateQueueRequest,
            queue_pb,
            lambda r: emulator.create_queue(r.parent, r.queue),
        ),
        "UpdateQueue": (
            cloudtasks.UpdateQueueRequest,
            queue_pb,
            lambda r: emulator.update_queue(r.queue, list(r.update_mask.paths)),
        ),
        "DeleteQueue": (cloudtasks.DeleteQueueRequest, empty_pb2.Empty, delete_queue),
        "PurgeQueue": (
            cloudtasks.PurgeQueueRequest,
            queue_pb,
            lambda r: emulator.purge_queue(r.name),
        ),
        "PauseQueue": (
            cloudtasks.PauseQueueRequest,
            queue_pb,
            lambda r: emulator.pause_queue(r.name),
        ),
        "ResumeQueue": (
            cloudtasks.ResumeQueueRequest,
            queue_pb,
            lambda r: emulator.resume_queue(r.name),
        ),
        "ListTasks": (cloudtasks.ListTasksRequest, cloudtasks.ListTasksResponse, list_tasks),
        "GetTask": (
            cloudtasks.GetTaskRequest,
            task_pb,
            lambda r: emulator.get_task(r.name, r.response_view),
        ),
        "CreateTask": (
            cloudtasks.CreateTaskRequest,
            task_pb,
            lambda r: emulator.create_task(r.parent, r.task, r.response_view),
        ),
        "DeleteTask": (cloudtasks.DeleteTaskRequest, empty_pb2.Empty, delete_task),
        "RunTask": (
            cloudtasks.RunTaskRequest,
            task_pb,
            lambda r: emulator.run_task(r.name, r.response_view),
        ),
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method, (request_type, _response_type, func) in routes.items():
        raw_request = request_type.pb()
        handlers[method] = grpc.unary_unary_rpc_method_handler(
            _wrap_async(func) if asynchronous else _wrap(func),
            request_deserializer=raw_request.FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
