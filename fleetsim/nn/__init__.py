"""Networks with droppable channel groups and their sub-networks."""

from fleetsim.nn.base import DroppableNet, Group, Keep, ParamSpec, ShapeCounter
from fleetsim.nn.models import MODELS, build_model
from fleetsim.nn.resnet import CifarResNet  # importing registers resnet8 and resnet20
from fleetsim.nn.slicing import keep_share, kept_counts, select_channels
from fleetsim.nn.user import UserNet  # registers model.arch: user

__all__ = ["MODELS", "CifarResNet", "DroppableNet", "Group", "Keep", "ParamSpec", "ShapeCounter",
           "UserNet", "build_model", "keep_share", "kept_counts", "select_channels"]
