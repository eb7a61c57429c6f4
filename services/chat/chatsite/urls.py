from django.urls import include, path
from django.views.generic import RedirectView

from chat import views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="index")),
    path("chat/", include("chat.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
