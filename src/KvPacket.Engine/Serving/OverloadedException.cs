namespace KvPacket.Engine.Serving;

/// <summary>The engine is at capacity (its waiting queue is full); a server answers 429.</summary>
public sealed class OverloadedException(string message) : Exception(message);
