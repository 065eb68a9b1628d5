"""Tables: keys, teams (with their members), organizations, users, spend logs, async jobs, deployments made
through the API, models added through the API. Keys keep only a SHA-256 hash and a display prefix."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, PrimaryKeyConstraint, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..durations import utcnow


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True)}


class LimitsMixin:
    """What keys, users and teams may each carry; a request obeys the tightest of the three."""

    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    max_parallel_requests: Mapped[int | None] = mapped_column(Integer)
    max_budget: Mapped[float | None] = mapped_column(Float)
    budget_duration: Mapped[str | None] = mapped_column(String(16))
    budget_reset_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    spend: Mapped[float] = mapped_column(Float, default=0.0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow,
                                                 server_default=func.now())


class Organization(LimitsMixin, Base):
    """A level above teams (LiteLLM's): its models bound its teams' models, its budget and limits
    apply to every key of its teams."""

    __tablename__ = "organizations"

    organization_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_alias: Mapped[str | None] = mapped_column(String(255))


class Team(LimitsMixin, Base):
    __tablename__ = "teams"

    team_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_alias: Mapped[str | None] = mapped_column(String(255))  # not unique, as in LiteLLM
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.organization_id", name="fk_teams_organization_id"), index=True)


class TeamMember(Base):
    """A user's membership of a team (LiteLLM's members_with_roles): `admin` members may manage
    the team's members; `max_budget_in_team` caps what the user's keys of this team may spend
    (`spend`: what they have spent), on top of the team's own budget."""

    __tablename__ = "team_members"
    __table_args__ = (PrimaryKeyConstraint("team_id", "user_id"), Index("ix_team_members_user", "user_id"))

    team_id: Mapped[str] = mapped_column(ForeignKey("teams.team_id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default="user")  # admin | user
    max_budget_in_team: Mapped[float | None] = mapped_column(Float)
    spend: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class User(LimitsMixin, Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_email: Mapped[str | None] = mapped_column(String(320))
    user_role: Mapped[str] = mapped_column(String(32), default="internal_user")
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.team_id", ondelete="SET NULL"))


class Key(LimitsMixin, Base):
    __tablename__ = "keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(32))
    key_alias: Mapped[str | None] = mapped_column(String(255), unique=True)
    key_type: Mapped[str] = mapped_column(String(16), default="default")
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.user_id", ondelete="SET NULL"), index=True)
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.team_id", ondelete="SET NULL"), index=True)
    aliases: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_rpm_limit: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_tpm_limit: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Rotation with a grace period: the old secret's hash keeps working until previous_valid_until.
    previous_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthChange(Base):
    """One change to a key, user or team that key caches must learn of, written by database
    triggers on insert, delete and update of the columns authentication depends on (never by
    spend accrual). Every gateway process reads new rows once a second (proxy/auth/changes.py)."""

    __tablename__ = "auth_changes"
    __table_args__ = (Index("ix_auth_changes_time", "changed_at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # key | user | team | org
    op: Mapped[str] = mapped_column(String(8))  # insert | update | delete
    ident: Mapped[str | None] = mapped_column(String(64))  # token_hash | user_id | team_id | organization_id
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # op spend: the spend set
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SpendLog(Base):
    __tablename__ = "spend_logs"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_hash: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64))
    team_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    deployment: Mapped[str | None] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64))
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    response_id: Mapped[str | None] = mapped_column(String(255))
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cache_creation_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index("ix_spend_logs_response_id", "response_id"),
        Index("ix_spend_logs_key_time", "key_hash", "created_at"),
        Index("ix_spend_logs_team_time", "team_id", "created_at"),
        Index("ix_spend_logs_user_time", "user_id", "created_at"),
        Index("ix_spend_logs_time", "created_at"),
        Index("ix_spend_logs_model_time", "model", "created_at"),
    )


class Job(Base):
    """An async job (POST /run): its chat request, who may see it, and how it went. `runner` names
    the gateway process that claimed it and holds it while its `heartbeat_at` is recent; a job moves IN_QUEUE -> IN_PROGRESS -> one end state
    (COMPLETED, FAILED, CANCELLED), each move a guarded UPDATE, so it ends once."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(96))
    model: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(2000))
    runner: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the runner's lease, renewed

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_owner_status", "owner", "status"),
        Index("ix_jobs_finished", "finished_at"),
    )


class ManagedDeployment(Base):
    """A model deployed through the API (POST /api/v1/deploy): a local GGUF run by a llama.cpp
    worker (`model_id`) or a remote OpenAI-compatible server (`api_base`), served as `api_name`.
    Kept so it is started again when the gateway restarts, until it is stopped."""

    __tablename__ = "managed_deployments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    api_name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str | None] = mapped_column(String(1000))
    api_base: Mapped[str | None] = mapped_column(String(1000))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_managed_deployments_status", "status"),)


class ProxyModel(Base):
    """A model added through the API (POST /model/new), served beside config.yaml's model_list by
    every gateway process. Secret values in `litellm_params` are stored encrypted (models/secrets.py)."""

    __tablename__ = "proxy_models"

    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255))
    litellm_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(255))
    updated_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRevision(Base):
    """One row whose `revision` grows with every change to proxy_models, in the same transaction:
    each process polls it (one primary-key read) to learn that the model map changed."""

    __tablename__ = "model_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
