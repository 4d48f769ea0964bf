"""Recurrent networks and their initialisation. torch only: no DB, no Celery."""

from models.init import init_recurrent_net
from models.rnn import RecurrentNet, RecurrentOutput

__all__ = ["RecurrentNet", "RecurrentOutput", "init_recurrent_net"]
