package org.tsvllm.frontend;

import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandler;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelPipeline;
import io.netty.channel.ServerChannel;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.FullHttpMessage;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpMessage;
import io.netty.handler.codec.http.HttpObjectAggregator;
import io.netty.handler.codec.http.HttpRequest;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.HttpVersion;
import io.netty.util.concurrent.EventExecutor;
import io.netty.util.concurrent.FastThreadLocal;
import io.netty.util.concurrent.FastThreadLocalThread;
import io.netty.util.internal.InternalThreadLocalMap;
import io.netty.util.internal.ThreadExecutorMap;
import java.lang.reflect.Field;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A request body over {@code max_request_size} gets an OpenAI-shaped 413 (JSON body naming the
 * limit and the setting), not TorchServe's bare 413 with an empty body.
 *
 * <p>TorchServe 0.12 builds each connection's pipeline in {@code ServerInitializer} with
 * Netty's {@code HttpObjectAggregator(max_request_size)}, whose refusal has no body; the plugin
 * API gives no hook there. So: each sweep finds the frontend's listening channels on Netty's
 * event loops; on each it adds {@link Acceptor}, which puts {@link Swap} at the head of every
 * accepted connection's pipeline. When the connection registers (after TorchServe's
 * initializer ran, before any byte is read), Swap replaces the aggregator with {@link
 * OpenAiAggregator}: the same limit and behaviour, an OpenAI error body.
 */
final class BodyLimit {
    private static final Logger logger = LoggerFactory.getLogger(BodyLimit.class);
    static final String NAME = "tsvllm-body-limit";

    private final int mappingsIndex;
    private final Acceptor acceptor = new Acceptor();

    private BodyLimit(int mappingsIndex) {
        this.mappingsIndex = mappingsIndex;
    }

    /** The fix, or null (logged) when this frontend's Netty lacks what it reads. */
    static BodyLimit create() {
        try {
            Field mappings = ThreadExecutorMap.class.getDeclaredField("mappings");
            mappings.setAccessible(true);
            Field index = FastThreadLocal.class.getDeclaredField("index");
            index.setAccessible(true);
            return new BodyLimit(index.getInt(mappings.get(null)));
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.warn("tsvllm: a body over max_request_size gets TorchServe's bare 413", e);
            return null;
        }
    }

    /** Adds {@link Acceptor} to every listening channel that lacks it (on its own loop). */
    void sweep() {
        for (EventExecutor loop : eventLoops()) {
            if (loop.isShuttingDown()) {
                continue;
            }
            loop.execute(
                    () -> {
                        for (Channel channel : registered(loop)) {
                            ChannelPipeline pipeline = channel.pipeline();
                            if (channel instanceof ServerChannel && pipeline.get(NAME) == null) {
                                pipeline.addFirst(NAME, acceptor);
                                logger.info(
                                        "tsvllm: a body over max_request_size on {} gets an"
                                                + " OpenAI 413",
                                        channel.localAddress());
                            }
                        }
                    });
        }
    }

    private List<EventExecutor> eventLoops() {
        ThreadGroup root = Thread.currentThread().getThreadGroup();
        while (root.getParent() != null) {
            root = root.getParent();
        }
        Thread[] threads = new Thread[root.activeCount() * 2 + 16];
        int count = root.enumerate(threads, true);
        List<EventExecutor> loops = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            if (threads[i] instanceof FastThreadLocalThread) {
                InternalThreadLocalMap map = ((FastThreadLocalThread) threads[i]).threadLocalMap();
                Object loop = map == null ? null : map.indexedVariable(mappingsIndex);
                if (loop instanceof EventExecutor) {
                    loops.add((EventExecutor) loop);
                }
            }
        }
        return loops;
    }

    /** The channels registered with {@code loop} (epoll or NIO), read on the loop's thread. */
    @SuppressWarnings("unchecked")
    private static List<Channel> registered(EventExecutor loop) {
        List<Channel> channels = new ArrayList<>();
        try {
            Class<?> type = loop.getClass();
            if (type.getName().equals("io.netty.channel.epoll.EpollEventLoop")) {
                Field field = type.getDeclaredField("channels");
                field.setAccessible(true);
                Object map = field.get(loop);
                Object values = map.getClass().getMethod("values").invoke(map);
                channels.addAll((Collection<Channel>) values);
            } else if (type.getName().equals("io.netty.channel.nio.NioEventLoop")) {
                Field field = type.getDeclaredField("unwrappedSelector");
                field.setAccessible(true);
                for (SelectionKey key : ((Selector) field.get(loop)).keys()) {
                    if (key.attachment() instanceof Channel) {
                        channels.add((Channel) key.attachment());
                    }
                }
            }
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.debug("tsvllm: cannot list the channels of {}", loop, e);
        }
        return channels;
    }

    /** On a listening channel: every accepted connection gets {@link Swap} first. */
    @ChannelHandler.Sharable
    static final class Acceptor extends ChannelInboundHandlerAdapter {
        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            if (msg instanceof Channel) {
                ((Channel) msg).pipeline().addFirst(NAME, new Swap());
            }
            ctx.fireChannelRead(msg);
        }
    }

    /** Replaces TorchServe's aggregator once the pipeline is built, then leaves it. */
    static final class Swap extends ChannelInboundHandlerAdapter {
        @Override
        public void channelRegistered(ChannelHandlerContext ctx) {
            ChannelPipeline pipeline = ctx.pipeline();
            ChannelHandler aggregator = pipeline.get("aggregator");
            if (aggregator != null && aggregator.getClass() == HttpObjectAggregator.class) {
                int max = ((HttpObjectAggregator) aggregator).maxContentLength();
                pipeline.replace("aggregator", "aggregator", new OpenAiAggregator(max));
            }
            pipeline.remove(this);
            ctx.fireChannelRegistered();
        }
    }

    /** Netty's aggregator, whose 413 is an OpenAI error body (same keep-alive rules). */
    static final class OpenAiAggregator extends HttpObjectAggregator {
        OpenAiAggregator(int maxContentLength) {
            super(maxContentLength);
        }

        @Override
        protected void handleOversizedMessage(ChannelHandlerContext ctx, HttpMessage oversized)
                throws Exception {
            if (!(oversized instanceof HttpRequest)) {
                super.handleOversizedMessage(ctx, oversized);
                return;
            }
            // as Netty's: close unless the rest of the body can be skipped on a kept connection
            boolean close =
                    oversized instanceof FullHttpMessage
                            || !HttpUtil.is100ContinueExpected(oversized)
                                    && !HttpUtil.isKeepAlive(oversized);
            FullHttpResponse response = tooLarge(maxContentLength(), close);
            if (close) {
                ctx.writeAndFlush(response).addListener(ChannelFutureListener.CLOSE);
            } else {
                ctx.writeAndFlush(response)
                        .addListener(ChannelFutureListener.CLOSE_ON_FAILURE);
            }
        }

        private static FullHttpResponse tooLarge(int max, boolean close) {
            String message =
                    "the request body is over this server's limit of "
                            + max
                            + " bytes (TorchServe's max_request_size in config.properties);"
                            + " send a smaller body or raise max_request_size";
            String body =
                    "{\"error\":{\"message\":\""
                            + message
                            + "\",\"type\":\"PayloadTooLargeError\",\"param\":null,"
                            + "\"code\":413}}";
            FullHttpResponse response =
                    new DefaultFullHttpResponse(
                            HttpVersion.HTTP_1_1,
                            HttpResponseStatus.REQUEST_ENTITY_TOO_LARGE,
                            Unpooled.copiedBuffer(body, StandardCharsets.UTF_8));
            response.headers()
                    .set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_JSON)
                    .setInt(HttpHeaderNames.CONTENT_LENGTH, response.content().readableBytes());
            if (close) {
                response.headers().set(HttpHeaderNames.CONNECTION, HttpHeaderValues.CLOSE);
            }
            return response;
        }
    }
}
