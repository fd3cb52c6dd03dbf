"""Roost wire protocol: frames, codec, error and close codes, tokens. Sans-IO: no trio, no sockets.

The public surface is re-exported here; see PROTOCOL.md for the wire contract itself.
"""

from .codec import CLIENT_LIMITS as CLIENT_LIMITS
from .codec import SERVER_LIMITS as SERVER_LIMITS
from .codec import Sender as Sender
from .codec import decode as decode
from .codec import dump_record as dump_record
from .codec import encode as encode
from .codec import load_record as load_record
from .errors import CloseCode as CloseCode
from .errors import ErrorCode as ErrorCode
from .errors import LocalProtocolError as LocalProtocolError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import may_reconnect as may_reconnect
from .frames import PROTOCOL_VERSION as PROTOCOL_VERSION
from .schema import Limits as Limits
