import jsonschema
import pytest

from invaudit.schemas import COMMANDS, schema


@pytest.mark.parametrize("command", COMMANDS)
def test_schema_is_valid_and_rejects_a_wrong_envelope(command):
    s = schema(command)
    jsonschema.Draft202012Validator.check_schema(s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": f"invaudit.{command}/1"}, s)
