"""Integer bounds shared by every API's request models.

The network's Go client reads and writes these fields as int64: a larger value could never come
from it nor be answered back to it (echoed heights and ids, callbacks), and an engine turns it into
int64 tensors and seeds. Python's int has no bound, so without these a value beyond int64 passes
validation; with them it is a 422 naming the field.
"""

from typing import Annotated

from pydantic import Field

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# A field's own ge=/le= would replace these bounds, not add to them (pydantic keeps one of
# each): a field with another lower bound takes its own type.
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
PositiveInt64 = Annotated[int, Field(ge=1, le=INT64_MAX)]
# strict: a nonce is a JSON integer, never a string or a float that happens to be whole.
Nonce = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
