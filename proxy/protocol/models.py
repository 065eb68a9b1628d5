"""Model management bodies and answers (/model/new, /model/update, /model/delete, /model/info,
/v2/model/info, /model_group/info) in LiteLLM's shapes. `litellm_params` and `model_info` are open
objects as in LiteLLM (any provider parameter), bounded like metadata; credentials never appear in
an answer (models/secrets.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .fields import Answer, ModelName, Strict, Timestamp, bounded, text

ModelId = Annotated[str, text(255, 1)]
Upstream = Annotated[str, text(1000, 3, "`provider/model`, e.g. `openai/gpt-4o`; `openai/*` for a wildcard "
                                      "model_name"), Field(pattern=r"^[^\x00/]+/[^\x00]+$")]


class LiteLLMParams(BaseModel):
    """A deployment's litellm_params: `model` plus any provider parameter (api_base, api_key,
    `os.environ/VAR` references, rpm, tpm, timeout, ...)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Upstream


class LiteLLMParamsUpdate(BaseModel):
    """Fields of litellm_params to change; the others stay as stored."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Upstream | None = None


def _bounded_object(value: BaseModel) -> BaseModel:
    bounded(value.model_dump())  # as deep and as large as metadata may be, no NUL
    return value


Params = Annotated[LiteLLMParams, AfterValidator(_bounded_object)]
ParamsUpdate = Annotated[LiteLLMParamsUpdate, AfterValidator(_bounded_object)]


class ModelInfoIn(BaseModel):
    """model_info: `id` (made up when absent), `access_groups`, prices and anything else LiteLLM
    keeps there (returned by /model/info)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    id: ModelId | None = None
    access_groups: list[ModelName] | None = Field(default=None, max_length=100)


Info = Annotated[ModelInfoIn, AfterValidator(_bounded_object)]


class ModelNew(Strict):
    model_name: ModelName = Field(description="the public name clients send; `openai/*` or `*` for a wildcard")
    litellm_params: Params
    model_info: Info | None = None


class ModelUpdate(Strict):
    """LiteLLM's updateDeployment: model_info.id names the model (POST /model/update)."""

    model_name: ModelName | None = None
    litellm_params: ParamsUpdate | None = None
    model_info: Info | None = None


class ModelDelete(Strict):
    id: ModelId


class ModelRow(Answer):
    """A model as stored (POST /model/new, /model/update): LiteLLM's proxy model table row."""

    model_id: str
    model_name: str
    litellm_params: dict[str, Any] = Field(description="credentials masked or left out")
    model_info: dict[str, Any]
    created_at: Timestamp
    updated_at: Timestamp
    created_by: str | None
    updated_by: str | None


class Deleted(Answer):
    message: str


class ModelEntryInfo(Answer):
    model_name: str
    litellm_params: dict[str, Any] = Field(description="credentials masked or left out")
    model_info: dict[str, Any] = Field(description="id, db_model, access_groups, prices, limits, ...")


class ModelInfoList(Answer):
    data: list[ModelEntryInfo]


class ModelInfoPage(Answer):
    data: list[ModelEntryInfo]
    total_count: int
    current_page: int
    total_pages: int
    size: int


class ModelGroup(Answer):
    model_group: str
    providers: list[str]
    max_input_tokens: int | None
    max_output_tokens: int | None
    input_cost_per_token: float | None
    output_cost_per_token: float | None
    mode: str | None
    tpm: int | None
    rpm: int | None
    supports_parallel_function_calling: bool
    supports_vision: bool
    supports_function_calling: bool
    supported_openai_params: list[str] | None
    configurable_clientside_auth_params: list[str] | None
    access_groups: list[str] = Field(default_factory=list)


class ModelGroups(Answer):
    data: list[ModelGroup]

