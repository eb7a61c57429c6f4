from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.utils.decorators import sync_and_async_middleware


@sync_and_async_middleware
def replica_header(get_response):
    """Names the replica that served each HTTP response, to make load balancing visible."""
    replica = settings.CHAT_REPLICA_ID

    if iscoroutinefunction(get_response):

        async def middleware(request):
            response = await get_response(request)
            response["X-Chat-Replica"] = replica
            return response

    else:

        def middleware(request):
            response = get_response(request)
            response["X-Chat-Replica"] = replica
            return response

    return middleware
