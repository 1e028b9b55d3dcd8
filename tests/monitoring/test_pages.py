"""The staff pages (monitoring/pages.py): behind the admin login, the dashboard's figures, and the
playground's chat endpoint, which is the API's chat view run as the staff user's playground key.
The browser test (tests/e2e/test_browser.py) drives the same pages in Chromium."""

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from chat.models import ApiKey, ChatSession, UsageRecord
from chat.usage.services import usage_record
from tests.support.personas import Persona


@pytest.fixture
def staff(db: None) -> User:
    """An operator: staff, allowed to view usage records (superusers are operators too)."""
    user = User.objects.create_user("sam", "sam@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    return user


def logged_in(user: User, **client_options) -> Client:
    client = Client(**client_options)
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", ["/admin/dashboard/", "/admin/playground/"])
def test_the_staff_pages_need_a_staff_login(db: None, path: str) -> None:
    not_staff = User.objects.create_user("nina", "nina@example.com", "pw")

    anonymous = Client().get(path)
    logged_in_not_staff = logged_in(not_staff).get(path)

    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    assert logged_in_not_staff.status_code == 302 and logged_in_not_staff["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("path", ["/admin/dashboard/", "/admin/playground/"])
def test_staff_without_operator_rights_get_403(db: None, path: str) -> None:
    plain_staff = User.objects.create_user("pat", "pat@example.com", "pw", is_staff=True)

    assert logged_in(plain_staff).get(path).status_code == 403


def test_staff_without_operator_rights_cannot_chat_in_the_playground(db: None) -> None:
    plain_staff = User.objects.create_user("pat", "pat@example.com", "pw", is_staff=True)

    response = logged_in(plain_staff).post("/admin/playground/chat", {"user_message": "hi"},
                                           content_type="application/json")

    assert (response.status_code, response.json()["error_code"]) == (403, "staff_login_required")
    assert not ApiKey.objects.exists() and not ChatSession.objects.exists()


def test_asking_the_playground_chat_for_html_is_a_clear_error_not_a_500(db: None) -> None:
    # The endpoint answers JSON or events only (the browsable API would rerun authentication).
    response = Client().post("/admin/playground/chat", {"user_message": "hi"}, content_type="application/json",
                             headers={"Accept": "text/html"})

    assert (response.status_code, response.json()["error_code"]) == (406, "not_acceptable")


def test_the_admin_index_links_to_the_staff_pages(staff: User) -> None:
    page = logged_in(staff).get("/admin/").content.decode()

    assert 'href="/admin/dashboard/"' in page and 'href="/admin/playground/"' in page


def test_the_dashboard_shows_todays_usage_top_keys_and_recent_failures(alice: Persona, staff: User) -> None:
    for _ in range(3):
        assert alice.client.post("/api/v1/chat", {"user_message": "hi"}, format="json").status_code == 200
    usage_record(api_key_id=alice.api_key.pk, session_pk=None, model="gpt-4o-mini", prompt_tokens=0,
                 completion_tokens=0, usage_estimated=False, key_source="default", latency_ms=5012,
                 outcome=UsageRecord.Outcome.FAILED, error_code="upstream_timeout")

    response = logged_in(staff).get("/admin/dashboard/")
    page = response.content.decode()

    assert response.status_code == 200
    assert response.context["today"]["requests"] == 4
    assert response.context["today"]["total_tokens"] == sum(UsageRecord.objects.values_list("total_tokens", flat=True))
    assert 'class="bar"' in page  # the chart has today's bar
    assert alice.api_key.key_id in page  # top keys
    assert "upstream_timeout" in page and "5012 ms" in page  # recent failures
    assert f"Database ({connection.vendor})" in page


def test_anonymous_playground_chat_is_refused_in_the_error_shape(db: None) -> None:
    response = Client().post("/admin/playground/chat", {"user_message": "hi"}, content_type="application/json")

    assert response.status_code == 403
    assert response.json()["error_code"] == "staff_login_required"
    assert not ChatSession.objects.exists()


def test_playground_chat_needs_the_csrf_token(staff: User) -> None:
    client = logged_in(staff, enforce_csrf_checks=True)
    client.get("/admin/playground/")  # sets the CSRF cookie, as the page does for its script

    without = client.post("/admin/playground/chat", {"user_message": "hi"}, content_type="application/json")
    with_token = client.post("/admin/playground/chat", {"user_message": "hi"}, content_type="application/json",
                             headers={"X-CSRFToken": client.cookies["csrftoken"].value})

    assert (without.status_code, without.json()["error_code"]) == (403, "permission_denied")
    assert with_token.status_code == 200, with_token.content
    assert ChatSession.objects.count() == 1


def test_playground_chats_run_as_the_staff_users_own_key(staff: User) -> None:
    client = logged_in(staff)

    first = client.post("/admin/playground/chat", {"user_message": "hi", "role": "You are terse."},
                        content_type="application/json")
    second = client.post("/admin/playground/chat", {"user_message": "again", "session_id": first.json()["session_id"]},
                         content_type="application/json")

    assert (first.status_code, second.status_code) == (200, 200), first.content
    key = ApiKey.objects.get()
    assert (key.name, key.owner, key.scopes) == ("Playground: sam", staff, ["chat"])
    session = ChatSession.objects.get()
    assert (session.api_key, session.system_prompt, session.messages.count()) == (key, "You are terse.", 4)
    page = client.get("/admin/playground/", {"session": session.public_id}).content.decode()
    assert "again" in page and "You are terse." in page


def test_the_staff_login_error_is_translated_into_korean(db: None) -> None:
    response = Client(headers={"Accept-Language": "ko"}).post(
        "/admin/playground/chat", {"user_message": "hi"}, content_type="application/json"
    )

    assert response.json()["error_message"] == "플레이그라운드를 사용하려면 슈퍼유저나 사용 기록을 볼 수 있는 스태프 사용자로 관리자 페이지에 로그인하세요."
